//! The `edgeloop` command line: the parser (`Cli`), the logs, and one
//! `run` per command family, each the code that calls the library for its
//! commands (`src/main.rs` only calls [`main`]):
//!
//! - `daemon.rs`: `run` (with SIGHUP reload and signal handling) and
//!   `check-config`;
//! - `models.rs`: `models import|list|promote|rollback|history` (over a
//!   running daemon's HTTP API) and `predict`;
//! - `learn.rs`: `train`, `tune`, `evaluate` and `finetune`;
//! - `data.rs`: `replay` and `demo`;
//! - `bench.rs`: `bench footprint` and `bench ingest`;
//! - `monitor.rs`: `anomaly`, `detect` and `drift`;
//! - [`render`]: tables within 100 columns (`--wide`: whole), local times.
//!
//! Commands print through `out!` and `outln!`, never `print!`: a closed
//! stdout (`edgeloop tune … | head`) is an error, [`StdoutClosed`], and the
//! command ends quietly with status 0, as ripgrep does. Messages to stderr
//! go through `errln!`, never `eprintln!`, which panicked (status 101) when
//! stderr was a pipe whose reader had gone: the message is dropped and the
//! command's own status stands.

/// `print!` to stdout as a `Result`: `out!(…)?` ([`write_stdout`]).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!($($arg)*))
    };
}

/// `println!` to stdout as a `Result`: `outln!(…)?` ([`write_stdout`]).
macro_rules! outln {
    () => {
        $crate::cli::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprintln!` that never panics: a write error on stderr (its reader gone)
/// drops the message ([`write_stderr`]).
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::write_stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}

mod bench;
mod daemon;
mod data;
mod learn;
mod models;
mod monitor;
pub mod render;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "edgeloop",
    version,
    about = "On-device ML loop: MQTT ingest, training, ONNX serving"
)]
struct Cli {
    /// Log filter, tracing EnvFilter syntax: "info", "edgeloop=debug", …
    ///
    /// Default: `daemon.log_filter` of the configuration (info, with rumqttd's
    /// router and link targets silenced); when given, SIGHUP leaves it.
    #[arg(long, global = true, help_heading = GLOBAL_OPTIONS, display_order = 1000)]
    log_level: Option<String>,
    /// Log lines as text (journald-friendly) or one JSON object a line.
    ///
    /// Text has no colours unless stderr is a terminal, and no timestamps
    /// under systemd's JOURNAL_STREAM (journald adds its own).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text,
          help_heading = GLOBAL_OPTIONS, display_order = 1001)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// The help heading of the options every command takes (`global = true`):
/// listed once, after the command's own.
pub const GLOBAL_OPTIONS: &str = "Global options";

/// The command line's definition (clap), for `--help` and its tests.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run(daemon::RunArgs),
    /// Validate the configuration and print the effective one.
    CheckConfig(daemon::CheckConfigArgs),
    /// Publish a CSV file's rows as JSON messages (column names as fields).
    Replay(data::ReplayArgs),
    /// Model versions of a running daemon, over its HTTP API.
    Models(models::ModelsArgs),
    /// Replay a labelled CSV, test then train, through the continuous loop.
    ///
    /// Beside a frozen first model; prints accuracy over time, the alarms
    /// and the promotions.
    Evaluate(learn::EvaluateArgs),
    /// Retrain the last layer of an ONNX classifier on a labelled CSV file.
    ///
    /// The last Gemm (or MatMul + Add) before Softmax; prints the original's
    /// and the fine-tuned model's holdout accuracy and the champion/challenger
    /// decision (src/learn/head.rs).
    Finetune(learn::FinetuneArgs),
    /// Train on a labelled CSV file through the daemon's code path.
    ///
    /// Rows in time order; prints the model cards side by side.
    Train(learn::TrainArgs),
    /// Search hyperparameters within a budget on a labelled CSV file.
    ///
    /// Rows in time order; trains the best through the daemon's code path
    /// and prints the trials (best first) and the chosen model's card.
    Tune(learn::TuneArgs),
    /// Run any ONNX model on a CSV file's rows; print every output per row.
    ///
    /// edgeloop's, skl2onnx, onnxmltools, torch.onnx. Columns are picked by
    /// the model's input names, else (one 2-D input) by an edgeloop model's
    /// features, else in order.
    Predict(models::PredictArgs),
    /// Half-Space Trees anomaly scores of a CSV stream, and the rows above.
    ///
    /// River's HalfSpaceTrees behind a MinMaxScaler; the rows printed are
    /// those above a learned quantile.
    Anomaly(monitor::AnomalyArgs),
    /// Rows of a CSV column where a drift detector raises an alarm.
    ///
    /// ADWIN, DDM or Page-Hinkley, as River's, the daemon's detectors.
    Detect(monitor::DetectArgs),
    /// Data drift of a CSV stream's windows against its first rows.
    ///
    /// KS and mean tests at effective sample sizes (autocorrelated data),
    /// with an effect-size floor (PSI, mean shift).
    Drift(monitor::DriftArgs),
    /// Measurements of this build (see BENCHMARKS.md).
    Bench(bench::BenchArgs),
    /// Run the whole loop on the UCI Occupancy data with an embedded broker.
    Demo(data::DemoArgs),
}

/// Reloads the log filter (SIGHUP).
type LogHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// Logs to stderr: text for journald (level as text, colours only on a
/// terminal, no timestamp when systemd's JOURNAL_STREAM says journald adds
/// its own) or JSON lines.
fn init_logs(filter: &str, format: LogFormat) -> LogHandle {
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{fmt, reload, EnvFilter, Layer};
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let ansi = std::io::stderr().is_terminal();
    let output = match format {
        LogFormat::Json => fmt::layer().json().with_writer(std::io::stderr).boxed(),
        LogFormat::Text if journald => fmt::layer()
            .without_time()
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Text => fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::filter::filter_fn(|m| {
            recorded(m.target(), m.is_span())
        }))
        .with(output)
        .init();
    handle
}

/// Whether a span or event of `target` is recorded: everything but the
/// embedded broker's spans. rumqttd opens an ERROR-level span for every
/// publish it routes (`router/routing.rs`: `error_span!("publish", topic =
/// ?publish.topic, …)`, and `incoming_payload` per read), so any filter
/// that keeps its errors recorded a span per message and formatted its
/// topic into it; rumqttd's events are still logged, without those spans.
fn recorded(target: &str, is_span: bool) -> bool {
    !(is_span && (target == "rumqttd" || target.starts_with("rumqttd::")))
}

/// Stdout was closed under a command (EPIPE: the reader of its pipe is gone,
/// `edgeloop tune … | head`). Not a failure: [`main`] ends quietly with
/// status 0, as ripgrep does (Rust ignores SIGPIPE, so the write fails where
/// a C tool would have been killed by the signal; ripgrep treats that error
/// as success, and `set -o pipefail` scripts see no failure). Only stdout's
/// writes raise it: an EPIPE on a socket of the daemon stays an error.
#[derive(Debug, thiserror::Error)]
#[error("stdout closed")]
pub struct StdoutClosed;

/// Writes `args` to stdout and flushes: what `out!` and `outln!` call.
///
/// # Errors
/// [`StdoutClosed`] when the pipe's reader is gone (EPIPE), any other
/// write error as "writing to stdout: …".
pub fn write_stdout(args: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_fmt(args)
        .and_then(|()| stdout.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => anyhow::Error::new(StdoutClosed),
            _ => anyhow::Error::new(e).context("writing to stdout"),
        })
}

/// Writes `args` to stderr, ignoring a failure: what `errln!` calls. There
/// is nowhere left to report a stderr that cannot be written.
pub fn write_stderr(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_fmt(args);
}

/// The binary's `main`: parses the command line, starts the logs, runs the
/// command; an error is printed as `edgeloop: …` with a non-zero exit.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet = matches!(
        cli.command,
        Command::Demo(data::DemoArgs { json: true, .. }) | Command::Bench(_)
    );
    let filter = match &cli.log_level {
        _ if quiet => "error,rumqttd::router::routing=off,rumqttd::server::broker=off".to_string(),
        Some(f) => f.clone(),
        None => crate::config::DEFAULT_LOG_FILTER.to_string(),
    };
    let logs = init_logs(&filter, cli.log_format);
    match run(cli, logs) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.chain().any(|c| c.is::<StdoutClosed>()) => ExitCode::SUCCESS,
        Err(e) => {
            errln!("edgeloop: {}", error_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// `e` and its causes on one line, each cause left out when the text so
/// far already holds it: many of edgeloop's errors print their source in
/// their own message, which anyhow's `{:#}` then repeated
/// ("…: Database already open. Cannot acquire lock.: Database already
/// open. Cannot acquire lock.").
fn error_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line
}

/// One line per command: that command family's `run`.
fn run(cli: Cli, logs: LogHandle) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let filter_from_flag = cli.log_level.is_some();
    match cli.command {
        Command::CheckConfig(args) => daemon::check_config(args),
        Command::Run(args) => daemon::run(args, runtime, logs, filter_from_flag),
        Command::Predict(args) => models::predict(args),
        Command::Replay(args) => data::replay(args, &runtime),
        Command::Models(args) => models::run(args, &runtime),
        Command::Evaluate(args) => learn::evaluate(args),
        Command::Finetune(args) => learn::finetune(args),
        Command::Train(args) => learn::train(args),
        Command::Tune(args) => learn::tune(args),
        Command::Bench(args) => bench::run(args),
        Command::Anomaly(args) => monitor::anomaly(args),
        Command::Detect(args) => monitor::detect(args),
        Command::Drift(args) => monitor::drift(args),
        Command::Demo(args) => data::demo(args, &runtime),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rumqttd_spans_are_not_recorded_its_events_are() {
        assert!(!super::recorded("rumqttd::router::routing", true));
        assert!(!super::recorded("rumqttd", true));
        assert!(super::recorded("rumqttd::router::routing", false));
        assert!(super::recorded("edgeloop::ingest::mqtt", true));
        assert!(super::recorded("rumqttdx", true));
    }
}
