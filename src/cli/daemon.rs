//! `edgeloop run` (the daemon, SIGHUP reload, SIGTERM/SIGINT) and
//! `edgeloop check-config`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::LogHandle;
use crate::config::Config;

/// `edgeloop run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Configuration file layered over the compiled-in default.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Longest wait for an orderly shutdown after SIGTERM/SIGINT, seconds.
    ///
    /// Default: `daemon.shutdown_timeout_s`; when given, SIGHUP leaves it.
    #[arg(long)]
    shutdown_grace_s: Option<u64>,
}

/// `edgeloop check-config`.
#[derive(clap::Args)]
pub struct CheckConfigArgs {
    /// Configuration file layered over the compiled-in default.
    #[arg(long)]
    config: Option<PathBuf>,
}

/// Validates the configuration and prints the effective one.
pub fn check_config(args: CheckConfigArgs) -> anyhow::Result<()> {
    let CheckConfigArgs { config } = args;
    let cfg = Config::load(config.as_deref())?;
    cfg.check_store_dir()?;
    cfg.check_engines()?;
    out!("{}", cfg.to_toml()?)?;
    errln!("configuration is valid");
    Ok(())
}

/// Runs the daemon until SIGTERM/SIGINT, rereading the configuration on
/// SIGHUP; `filter_from_flag`: `--log-level` was given.
pub fn run(
    args: RunArgs,
    runtime: tokio::runtime::Runtime,
    logs: LogHandle,
    filter_from_flag: bool,
) -> anyhow::Result<()> {
    let RunArgs {
        config,
        shutdown_grace_s,
    } = args;
    crate::daemon::map_large_allocations();
    let cfg = Config::load(config.as_deref())?;
    let reload = Reload {
        path: config,
        running: cfg.clone(),
        logs,
        filter_from_flag,
        grace_from_flag: shutdown_grace_s.is_some(),
        grace_ms: Arc::new(AtomicU64::new(
            shutdown_grace_s.unwrap_or(cfg.daemon.shutdown_timeout_s) * 1000,
        )),
    };
    if !reload.filter_from_flag {
        reload.set_filter(&cfg.daemon.log_filter);
    }
    let grace_ms = reload.grace_ms.clone();
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(handle_signals(shutdown.clone(), reload));
        let running = crate::daemon::start(cfg, shutdown).await?;
        running
            .wait_with(|| Duration::from_millis(grace_ms.load(Ordering::Relaxed)))
            .await
    });
    // Blocking work that ignored cancellation must not hold the exit.
    runtime.shutdown_timeout(Duration::from_millis(500));
    result?;
    Ok(())
}

/// What SIGHUP rereads and applies (see `edgeloop::daemon::reload_plan`).
struct Reload {
    path: Option<PathBuf>,
    /// The configuration the daemon runs with (`[daemon]` as last applied).
    running: Config,
    logs: LogHandle,
    /// `--log-level` / `--shutdown-grace-s` were given: they win over the file.
    filter_from_flag: bool,
    grace_from_flag: bool,
    grace_ms: Arc<AtomicU64>,
}

impl Reload {
    fn set_filter(&self, filter: &str) {
        match tracing_subscriber::EnvFilter::try_new(filter) {
            Ok(f) => {
                if let Err(e) = self.logs.reload(f) {
                    tracing::warn!(error = %e, "Cannot change the log filter.");
                }
            }
            Err(e) => {
                tracing::warn!(%filter, error = %e, "Log filter not understood; keeping the current one.")
            }
        }
    }

    fn apply(&mut self) {
        let reread = match Config::load(self.path.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: configuration not reloaded; the running one stays.");
                return;
            }
        };
        let plan = crate::daemon::reload_plan(&self.running, &reread);
        for key in &plan.applied {
            match key.as_str() {
                "daemon.log_filter" if !self.filter_from_flag => {
                    self.set_filter(&reread.daemon.log_filter)
                }
                "daemon.shutdown_timeout_s" if !self.grace_from_flag => self
                    .grace_ms
                    .store(reread.daemon.shutdown_timeout_s * 1000, Ordering::Relaxed),
                _ => tracing::info!(%key, "SIGHUP: key changed, but a command-line flag sets it."),
            }
        }
        self.running = crate::daemon::reloaded(&self.running, &reread);
        tracing::info!(applied = ?plan.applied, "SIGHUP: configuration reloaded.");
        if !plan.restart.is_empty() {
            tracing::warn!(needs_restart = ?plan.restart, "SIGHUP: these changed keys need a restart; they keep their running values until then.");
        }
        let status = format!(
            "Configuration reloaded; {} changed key(s) need a restart",
            plan.restart.len()
        );
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&status)]);
    }
}

/// SIGTERM/SIGINT cancel `token`; SIGHUP rereads the configuration.
async fn handle_signals(token: CancellationToken, mut reload: Reload) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "Cannot listen for SIGHUP.");
            return cancel_on_signal(token).await;
        }
    };
    let stop = cancel_on_signal(token);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            Some(()) = hup.recv() => reload.apply(),
        }
    }
}

/// SIGTERM/SIGINT cancel `token` (also `edgeloop replay`'s).
pub(super) async fn cancel_on_signal(token: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "Cannot listen for SIGTERM.");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received; shutting down: ingest first, then draining, then HTTP."),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; shutting down: ingest first, then draining, then HTTP."),
    }
    token.cancel();
}
