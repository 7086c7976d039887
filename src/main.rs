//! The `edgeloop` binary: parses the command line and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use edgeloop::config::{parse_mqtt_url, Config};
use edgeloop::ingest::replay::{self, ReplayOptions};

#[derive(Parser)]
#[command(
    name = "edgeloop",
    version,
    about = "On-device ML loop: MQTT ingest, training, ONNX serving"
)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "edgeloop=debug".
    /// Default: `daemon.log_filter` of the configuration (info, with rumqttd's
    /// router and link targets silenced); when given, SIGHUP leaves it.
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// Log lines as text (journald-friendly: no colours unless a terminal, no
    /// timestamps under systemd's JOURNAL_STREAM) or one JSON object a line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        /// Configuration file layered over the compiled-in default.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Longest wait for an orderly shutdown after SIGTERM/SIGINT,
        /// seconds (default: `daemon.shutdown_timeout_s`; when given, SIGHUP
        /// leaves it).
        #[arg(long)]
        shutdown_grace_s: Option<u64>,
    },
    /// Validate the configuration and print the effective one.
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Publish a CSV file's rows as JSON messages (column names as fields).
    Replay {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        topic: String,
        /// Messages per second (default: as fast as the broker acknowledges).
        #[arg(long)]
        rate: Option<f64>,
        /// Broker URL.
        #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
        broker: String,
        /// Columns to leave out (repeatable), e.g. the label.
        #[arg(long = "drop-column")]
        drop_columns: Vec<String>,
        /// Only the first N rows.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Model versions of a running daemon, over its HTTP API.
    Models {
        #[command(subcommand)]
        action: ModelsAction,
        /// Base URL of the daemon's HTTP API.
        #[arg(long, global = true, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Print the daemon's JSON answer.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Replay a labelled CSV stream, test then train, through the continuous
    /// loop and beside a frozen first model.
    Evaluate {
        /// Prequential (test-then-train) evaluation; the only mode for now.
        #[arg(long)]
        prequential: bool,
        #[arg(long)]
        file: PathBuf,
        /// Label column (or the pipeline's label with --pipeline).
        #[arg(long, required_unless_present = "pipeline")]
        label: Option<String>,
        /// Feature columns, comma-separated (default: every other numeric column).
        #[arg(long, value_delimiter = ',')]
        features: Vec<String>,
        /// Take label, features, trainer and detector settings from this
        /// pipeline of the configuration (--config).
        #[arg(long)]
        pipeline: Option<String>,
        #[arg(long)]
        config: Option<PathBuf>,
        /// Model family: logistic, mlp, tree, forest or svm (default: the
        /// pipeline's with --pipeline, else logistic).
        #[arg(long)]
        family: Option<String>,
        /// Concept-drift detector: adwin, ddm or page_hinkley.
        #[arg(long, default_value = "adwin")]
        detector: String,
        /// Segments in the accuracy-over-time table.
        #[arg(long, default_value_t = 10)]
        segments: usize,
        #[arg(long)]
        json: bool,
    },
    /// Retrain the last layer (Gemm/MatMul+Add before Softmax) of an ONNX
    /// classifier on a labelled CSV file; print the original's and the
    /// fine-tuned model's holdout accuracy and the champion/challenger
    /// decision (src/learn/head.rs).
    Finetune {
        #[arg(long)]
        model: PathBuf,
        /// Labelled CSV, rows in time order; every other column is a feature.
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        label: String,
        /// Temporal holdout: the newest FRACTION of rows.
        #[arg(long, default_value_t = 0.2)]
        holdout: f64,
        /// Class names in output order, comma-separated (default: the
        /// model's edgeloop metadata, else the labels sorted).
        #[arg(long, value_delimiter = ',')]
        classes: Vec<String>,
        /// L2 penalty on the head's weights, per sample.
        #[arg(long, default_value_t = 1e-3)]
        l2: f64,
        /// Where to write the fine-tuned model (only when promoted).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Train from a labelled CSV file (rows in time order) through the same
    /// code path as the daemon, and print the model cards side by side.
    Train {
        #[command(flatten)]
        input: CsvInput,
        /// Temporal holdout: the newest FRACTION of rows (default 0.2).
        #[arg(long, conflicts_with = "folds")]
        holdout: Option<f64>,
        /// Print the model cards as JSON (the models endpoint's fields).
        #[arg(long)]
        json: bool,
    },
    /// Search hyperparameters within a budget on a labelled CSV file (rows in
    /// time order), train the best through the daemon's code path, and print
    /// the trials (best first) and the chosen model's card.
    Tune {
        #[command(flatten)]
        input: CsvInput,
        /// Wall-time budget of search and final training: 60s, 500ms, 2m
        /// (default: the pipeline's `search.budget_s`, else 60 s).
        #[arg(long)]
        budget: Option<String>,
        /// random or successive_halving.
        #[arg(long)]
        strategy: Option<String>,
        /// Configurations tried, the configured settings included.
        #[arg(long)]
        max_trials: Option<usize>,
        /// Trials run in parallel.
        #[arg(long)]
        threads: Option<usize>,
        #[arg(long)]
        seed: Option<u64>,
        /// Print `{"trials": [...], "card": {...}}`.
        #[arg(long)]
        json: bool,
    },
    /// Run any ONNX model (edgeloop's, skl2onnx, onnxmltools, torch.onnx) on
    /// a CSV file's rows and print every output per row. Columns are picked
    /// by the model's input names, else (one 2-D input) by an edgeloop
    /// model's features, else in order.
    Predict {
        /// The ONNX model.
        #[arg(long)]
        model: PathBuf,
        /// CSV file with a header row.
        #[arg(long)]
        file: PathBuf,
        /// tract, ort (feature `ort`) or auto (tract, then onnxruntime when
        /// tract refuses the model).
        #[arg(long, default_value = "auto")]
        engine: edgeloop::serve::engine::EngineKind,
        /// libonnxruntime shared library (default: ORT_DYLIB_PATH).
        #[arg(long)]
        ort_library: Option<PathBuf>,
        /// Features per row of an input whose width the model leaves out.
        #[arg(long)]
        input_width: Option<usize>,
        /// Print `{"engine", "rows": [{output: value}]}`.
        #[arg(long)]
        json: bool,
    },
    /// Measurements of this build (see BENCHMARKS.md).
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// Run the whole loop on the UCI Occupancy data with an embedded broker.
    Demo {
        /// Print the summary as one JSON object.
        #[arg(long)]
        json: bool,
        /// Directory with datatraining.txt and datatest2.txt.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

/// What `train` and `tune` read: a labelled CSV and the settings to train it
/// with.
#[derive(clap::Args)]
struct CsvInput {
    #[arg(long)]
    file: PathBuf,
    /// Label column (or the pipeline's label with --pipeline).
    #[arg(long, required_unless_present = "pipeline")]
    label: Option<String>,
    /// Feature columns, comma-separated (default: every other numeric column).
    #[arg(long, value_delimiter = ',')]
    features: Vec<String>,
    /// classification or regression (default: regression when every label
    /// is a number and there are more than 20 distinct ones).
    #[arg(long)]
    task: Option<String>,
    /// logistic, linear, ridge, mlp, tree, forest, svm or auto (every family
    /// that supports the task; the best serves). Default: the pipeline's
    /// with --pipeline, else auto.
    #[arg(long)]
    family: Option<String>,
    /// k-fold cross-validation (stratified for classification) over the
    /// training part, besides the holdout; candidates and trials compared by
    /// it.
    #[arg(long)]
    folds: Option<usize>,
    /// Write the chosen model as ONNX.
    #[arg(long)]
    export: Option<PathBuf>,
    /// Take label, features, task and model settings from this pipeline of
    /// the configuration (--config).
    #[arg(long)]
    pipeline: Option<String>,
    #[arg(long)]
    config: Option<PathBuf>,
}

impl CsvInput {
    /// The settings of the configured pipeline (or the defaults) with this
    /// command line over them.
    fn settings(
        &self,
        default_name: &str,
    ) -> anyhow::Result<edgeloop::learn::offline::CsvSettings> {
        let cfg = Config::load(self.config.as_deref())?;
        let args = edgeloop::learn::offline::CsvArgs {
            pipeline: self.pipeline.clone(),
            label: self.label.clone(),
            features: self.features.clone(),
            task: self.task.clone(),
            family: self.family.clone(),
            folds: self.folds,
        };
        let pipeline = match &self.pipeline {
            Some(name) => {
                let p = cfg
                    .pipeline(name)
                    .ok_or_else(|| anyhow::anyhow!("no pipeline `{name}` in the configuration"))?;
                Some(edgeloop::learn::offline::CsvSettings {
                    label: p.label.clone(),
                    features: p.features.clone(),
                    model: p.model.clone(),
                    task: Some(p.task),
                    name: name.clone(),
                })
            }
            None => None,
        };
        edgeloop::learn::offline::csv_settings(pipeline, args, default_name)
            .map_err(anyhow::Error::msg)
    }
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Binary sizes (aarch64, armv7), resident memory idle, ingesting at
    /// 5,000 messages/s and training 100,000 samples, and time to ready.
    Footprint {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Short runs (1 s of ingest, 5,000 training samples): checks the
        /// command, not the board.
        #[arg(long)]
        quick: bool,
    },
    /// Ingest throughput: the daemon (ack after commit) against a bare QoS 1
    /// subscriber on the same broker, embedded and mosquitto, steady
    /// publishing and a drained backlog (src/bench/ingest.rs).
    Ingest {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// 5,000 messages per row: checks the command, not the numbers.
        #[arg(long)]
        quick: bool,
        /// Messages per row (default 100,000; 5,000 with --quick).
        #[arg(long)]
        messages: Option<u64>,
        /// Publisher rate of the steady rows, msg/s (default: as fast as
        /// its QoS 1 in-flight window allows).
        #[arg(long)]
        rate: Option<u64>,
        /// Longest consuming phase of one run before it is reported stalled,
        /// seconds.
        #[arg(long, default_value_t = 120)]
        timeout_s: u64,
        /// mosquitto executable (default: /usr/sbin/mosquitto, else PATH).
        #[arg(long)]
        mosquitto: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ModelsAction {
    /// Upload an ONNX model: checked and stored as a new version, served
    /// only once promoted.
    Import {
        #[arg(long)]
        pipeline: String,
        #[arg(long)]
        file: PathBuf,
    },
    /// Every version's model card, side by side.
    List {
        #[arg(long)]
        pipeline: String,
    },
    /// Serve a stored version.
    Promote {
        #[arg(long)]
        pipeline: String,
        #[arg(long)]
        version: u32,
    },
    /// Serve the version that served before the current one.
    Rollback {
        #[arg(long)]
        pipeline: String,
    },
    /// The timeline of versions and decisions.
    History {
        #[arg(long)]
        pipeline: String,
    },
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
        .with(output)
        .init();
    handle
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet = matches!(
        cli.command,
        Command::Demo { json: true, .. } | Command::Bench { .. }
    );
    let filter = match &cli.log_level {
        _ if quiet => "error,rumqttd::router::routing=off,rumqttd::server::broker=off".to_string(),
        Some(f) => f.clone(),
        None => edgeloop::config::DEFAULT_LOG_FILTER.to_string(),
    };
    let logs = init_logs(&filter, cli.log_format);
    match run(cli, logs) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgeloop: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, logs: LogHandle) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::CheckConfig { config } => {
            let cfg = Config::load(config.as_deref())?;
            print!("{}", cfg.to_toml()?);
            eprintln!("configuration is valid");
            Ok(())
        }
        Command::Run {
            config,
            shutdown_grace_s,
        } => {
            let cfg = Config::load(config.as_deref())?;
            let reload = Reload {
                path: config,
                running: cfg.clone(),
                logs,
                filter_from_flag: cli.log_level.is_some(),
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
                let running = edgeloop::daemon::start(cfg, shutdown).await?;
                running
                    .wait_with(|| Duration::from_millis(grace_ms.load(Ordering::Relaxed)))
                    .await
            });
            // Blocking work that ignored cancellation must not hold the exit.
            runtime.shutdown_timeout(Duration::from_millis(500));
            result?;
            Ok(())
        }
        Command::Predict {
            model,
            file,
            engine,
            ort_library,
            input_width,
            json,
        } => {
            let options = edgeloop::serve::engine::LoadOptions {
                input_width,
                ort_library,
            };
            let out = edgeloop::serve::predict_file::predict_file(&model, &file, engine, &options)?;
            if json {
                println!("{}", out.to_json());
            } else {
                eprintln!("engine: {}", out.engine);
                print!("{}", out.table());
            }
            Ok(())
        }
        Command::Replay {
            file,
            topic,
            rate,
            broker,
            drop_columns,
            limit,
        } => {
            let (host, port) = parse_mqtt_url(&broker).map_err(anyhow::Error::msg)?;
            let opts = ReplayOptions {
                file,
                topic,
                rate,
                host,
                port,
                drop_columns,
                limit,
                client_id: format!("edgeloop-replay-{}", std::process::id()),
            };
            let report = runtime.block_on(async {
                let shutdown = CancellationToken::new();
                tokio::spawn(cancel_on_signal(shutdown.clone()));
                let payloads = replay::csv_payloads(&opts)?;
                replay::publish_all(&opts, payloads, shutdown).await
            })?;
            println!(
                "published {} messages, {} acknowledged",
                report.published, report.acknowledged
            );
            Ok(())
        }
        Command::Models { action, url, json } => {
            let addr: std::net::SocketAddr = url
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .parse()
                .map_err(|_| anyhow::anyhow!("--url `{url}`: expected http://IP:PORT"))?;
            let mut body = None;
            let (method, path) = match &action {
                ModelsAction::Import { pipeline, file } => {
                    let bytes = std::fs::read(file)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                    let sha = edgeloop::serve::intake::sha256_hex(&bytes);
                    body = Some(bytes);
                    (
                        "PUT",
                        format!("/v1/pipelines/{pipeline}/models?sha256={sha}"),
                    )
                }
                ModelsAction::List { pipeline } => {
                    ("GET", format!("/v1/pipelines/{pipeline}/models"))
                }
                ModelsAction::Promote { pipeline, version } => (
                    "POST",
                    format!("/v1/pipelines/{pipeline}/models/{version}/promote"),
                ),
                ModelsAction::Rollback { pipeline } => {
                    ("POST", format!("/v1/pipelines/{pipeline}/rollback"))
                }
                ModelsAction::History { pipeline } => {
                    ("GET", format!("/v1/pipelines/{pipeline}/history"))
                }
            };
            let (status, body) = runtime.block_on(async {
                let mut client = edgeloop::demo::HttpClient::connect(addr)
                    .await
                    .map_err(anyhow::Error::msg)?;
                client
                    .request(method, &path, body)
                    .await
                    .map_err(anyhow::Error::msg)
            })?;
            let value: serde_json::Value =
                serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            anyhow::ensure!(
                status < 400,
                "{status}: {}",
                value["error"]
                    .as_str()
                    .unwrap_or(&String::from_utf8_lossy(&body))
            );
            if json {
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print!("{}", edgeloop::http::render(&value));
            }
            Ok(())
        }
        Command::Evaluate {
            prequential,
            file,
            label,
            features,
            pipeline,
            config,
            family,
            detector,
            segments,
            json,
        } => {
            anyhow::ensure!(prequential, "only --prequential evaluation exists for now");
            let detector: edgeloop::monitor::continual::DetectorKind =
                serde_json::from_value(serde_json::Value::String(detector.clone())).map_err(
                    |_| anyhow::anyhow!("detector `{detector}`: use adwin, ddm or page_hinkley"),
                )?;
            let mut loop_config = edgeloop::monitor::continual::ContinualConfig {
                detector,
                ..Default::default()
            };
            let (label, features) = match pipeline {
                Some(name) => {
                    let cfg = Config::load(config.as_deref())?;
                    let p = cfg.pipeline(&name).ok_or_else(|| {
                        anyhow::anyhow!("no pipeline `{name}` in the configuration")
                    })?;
                    loop_config.detector = p.drift.detector;
                    // The pipeline's training settings (holdout, warm
                    // start, margins, reservoir_in_training), as the daemon's.
                    loop_config.model = p.model.clone();
                    loop_config.cooldown = p.drift.cooldown_labels;
                    loop_config.retrain_on_drift = p.drift.retrain_on_drift;
                    let features = if features.is_empty() {
                        p.features.clone()
                    } else {
                        features
                    };
                    (label.unwrap_or_else(|| p.label.clone()), features)
                }
                None => (label.unwrap_or_default(), features),
            };
            if let Some(f) = family {
                loop_config.model.family = f.parse().map_err(anyhow::Error::msg)?;
            }
            anyhow::ensure!(
                loop_config.model.family != edgeloop::learn::Family::Auto
                    && loop_config.model.family.supports(edgeloop::learn::Task::Classification),
                "--family {}: the prequential loop trains one classification family (logistic, mlp, tree, forest, svm)",
                loop_config.model.family
            );
            let opts = edgeloop::monitor::prequential::PrequentialOptions {
                file,
                label,
                features,
                loop_config,
                segments,
            };
            let report = edgeloop::monitor::prequential::run(&opts)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", edgeloop::monitor::prequential::render(&report));
            }
            Ok(())
        }
        Command::Finetune {
            model,
            file,
            label,
            holdout,
            classes,
            l2,
            out,
            json,
        } => {
            use edgeloop::learn::head;
            let args = head::FinetuneFile {
                model,
                file,
                label,
                classes,
                out: out.clone(),
                options: head::FinetuneOptions {
                    holdout,
                    l2,
                    ..Default::default()
                },
            };
            let (report, written) = head::finetune_file(&args)?;
            if json {
                let mut v = serde_json::to_value(&report)?;
                v["written"] = serde_json::json!(written.then_some(out));
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", head::render(&report, out.as_deref(), written));
            }
            Ok(())
        }
        Command::Train {
            input,
            holdout,
            json,
        } => {
            let edgeloop::learn::offline::CsvSettings {
                label,
                features,
                mut model,
                task,
                name,
            } = input.settings("train")?;
            let (file, export) = (input.file, input.export);
            if let Some(h) = holdout {
                model.holdout_fraction = h;
            }
            edgeloop::config::validate_model(&model, task, "model.")?;
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let opts = edgeloop::learn::offline::OfflineOptions {
                file,
                label,
                features,
                task,
                model,
                name,
                export: export.clone(),
            };
            let report = edgeloop::learn::offline::train_csv(&opts, &|family, i, total| {
                bar.set_length(total as u64);
                bar.set_position(i as u64);
                bar.set_message(format!("training {family}"));
            })
            .map_err(anyhow::Error::msg)?;
            bar.finish_and_clear();
            let cards = edgeloop::learn::offline::cards(&report);
            if json {
                println!("{}", serde_json::to_string_pretty(cards)?);
            } else {
                let chosen = &report.training.chosen.card;
                print!("{}", edgeloop::learn::card::render_table(cards, None));
                println!(
                    "\n{} rows, {}; chosen: {} ({} {})",
                    report.rows,
                    report.task,
                    chosen.family,
                    chosen.metric,
                    chosen
                        .holdout_score
                        .map_or("-".into(), |s| format!("{s:.4}"))
                );
                if let Some(path) = export {
                    println!("wrote {}", path.display());
                }
            }
            Ok(())
        }
        Command::Tune {
            input,
            budget,
            strategy,
            max_trials,
            threads,
            seed,
            json,
        } => {
            use edgeloop::learn::tune;
            let edgeloop::learn::offline::CsvSettings {
                label,
                features,
                mut model,
                task,
                name,
            } = input.settings("tune")?;
            let (file, export) = (input.file, input.export);
            let search = &mut model.search;
            search.enabled = true;
            if let Some(b) = budget {
                search.budget_s = tune::parse_budget(&b).map_err(anyhow::Error::msg)?;
            }
            if let Some(s) = strategy {
                search.strategy = serde_json::from_value(serde_json::Value::String(s.clone()))
                    .map_err(|_| {
                        anyhow::anyhow!("--strategy `{s}`: use random or successive_halving")
                    })?;
            }
            search.max_trials = max_trials.unwrap_or(search.max_trials);
            search.threads = threads.unwrap_or(search.threads);
            search.seed = seed.unwrap_or(search.seed);
            edgeloop::config::validate_model(&model, task, "model.")?;
            let budget_s = model.search.budget_s;
            let bar = if json {
                indicatif::ProgressBar::hidden()
            } else {
                indicatif::ProgressBar::new((budget_s * 10.0).ceil() as u64)
            };
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:30} {elapsed}/budget {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let started = std::time::Instant::now();
            let opts = edgeloop::learn::offline::OfflineOptions {
                file,
                label,
                features,
                task,
                model,
                name,
                export: export.clone(),
            };
            let report = tune::tune_csv(&opts, &|trial| {
                bar.set_position((started.elapsed().as_secs_f64() * 10.0) as u64);
                bar.set_message(format!(
                    "trial {} {}: {}",
                    trial.id,
                    trial.family,
                    trial.score.map_or("-".into(), |s| format!("{s:.4}"))
                ));
            })
            .map_err(anyhow::Error::msg)?;
            bar.finish_and_clear();
            if json {
                let out = serde_json::json!({ "trials": report.trials, "card": report.card });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                print!(
                    "{}",
                    tune::render_trials(&report.trials, &report.card.metric)
                );
                println!();
                print!(
                    "{}",
                    edgeloop::learn::card::render_table(std::slice::from_ref(&report.card), None)
                );
                let best = report.card.search.as_ref().and_then(|s| s.best.as_ref());
                println!(
                    "\n{} rows, {}; chosen: trial {} {} ({} {})",
                    report.rows,
                    report.task,
                    best.map_or("-".into(), |b| b.id.to_string()),
                    report.card.family,
                    report.card.metric,
                    report
                        .card
                        .holdout_score
                        .map_or("-".into(), |s| format!("{s:.4}"))
                );
                if let Some(path) = export {
                    println!("wrote {}", path.display());
                }
            }
            Ok(())
        }
        Command::Bench {
            what: BenchCommand::Footprint { json, quick },
        } => {
            let report = edgeloop::bench::footprint(&edgeloop::bench::FootprintOptions {
                binary: std::env::current_exe().context("locating the edgeloop binary")?,
                target_dir: edgeloop::bench::target_dir(),
                quick,
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", edgeloop::bench::render(&report));
            }
            Ok(())
        }
        Command::Bench {
            what:
                BenchCommand::Ingest {
                    json,
                    quick,
                    messages,
                    rate,
                    timeout_s,
                    mosquitto,
                },
        } => {
            use edgeloop::bench::ingest;
            let mut opts = ingest::IngestOptions::new(
                std::env::current_exe().context("locating the edgeloop binary")?,
                quick,
            );
            opts.messages = messages.unwrap_or(opts.messages);
            opts.rate = rate;
            opts.timeout_s = timeout_s;
            opts.mosquitto = mosquitto;
            let report = ingest::run(&opts)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", ingest::render(&report));
            }
            Ok(())
        }
        Command::Demo { json, data_dir } => {
            let dir = data_dir.unwrap_or_else(edgeloop::demo::default_data_dir);
            let summary = runtime.block_on(edgeloop::demo::run(&dir))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print!("{}", edgeloop::demo::render(&summary));
            }
            Ok(())
        }
    }
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
        let plan = edgeloop::daemon::reload_plan(&self.running, &reread);
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
        self.running.daemon = reread.daemon;
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

async fn cancel_on_signal(token: CancellationToken) {
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
