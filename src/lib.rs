//! # edgeloop
//!
//! An on-device machine-learning loop for edge gateways: sensor readings
//! arrive over MQTT, are stored durably, a model is trained and evaluated on
//! the device, exported to ONNX, served to local apps over HTTP and MQTT, and
//! used on new readings.
//!
//! ## Layout: the modules follow the path a sample travels
//!
//! ```text
//! ingest → store → features → learn → onnx → serve → monitor   (the data)
//! config composes the sections the stages own; http and daemon wire them
//! ```
//!
//! Each top-level module imports only modules below it in this list (read
//! from the bottom), never both ways between two, and no stage imports
//! [`config`] (`tests/layering.rs` holds it so; ARCHITECTURE.md, "Layers"):
//!
//! - [`daemon`]: wiring, ordered shutdown within a deadline, component
//!   supervision, systemd notification (`READY`, `STOPPING`, `STATUS`,
//!   watchdog) and what a SIGHUP reload may apply ([`daemon::reload_plan`]);
//!   [`demo`]: the end-to-end demo on the UCI Occupancy data;
//!   [`bench`](mod@bench): `edgeloop bench footprint` and `bench ingest`;
//!   [`cli`]: the command line (`src/main.rs` calls [`cli::main`]), one
//!   file per command family.
//! - [`http`]: the HTTP API (axum) over every stage; every error is JSON;
//!   the bearer token ([`http::access`]) and the connection limits and
//!   HTTPS ([`http::serve`]); the dashboard, `GET /` and the JSON it reads
//!   ([`http::dashboard`]).
//! - [`config`]: typed configuration in layers (compiled-in default, file,
//!   `EDGELOOP__SECTION__KEY`), validated before anything starts; it
//!   composes the sections the stages own and hands each stage its own
//!   ([`config::PipelineConfig::route`], `schema`, `settings`, `monitored`).
//! - [`metrics`]: `GET /metrics` in Prometheus text, read from [`stats`],
//!   the store, the registry, the drift board and [`health`] at scrape time.
//! - [`monitor`]: the learner and its retraining policy; concept drift on
//!   the error stream (the detectors of [`learn::drift`]) and data drift
//!   (PSI, KS; at effective sample sizes, [`monitor::data_drift`]);
//!   anomaly scores (Half-Space Trees, [`learn::anomaly`], scored by the
//!   predictor); data-drift and anomaly alarms that annotate the timeline
//!   and train where `retrain_on` names them; the
//!   continuous-learning loop (champion/challenger, reservoir of old regimes)
//!   and its prequential replay (online regressors:
//!   [`monitor::prequential_regression`]); the online learner beside the batch loop,
//!   which learns every label, serves as ONNX snapshots when more accurate
//!   ([`monitor::online`], `[pipelines.online]`); its section
//!   [`monitor::MonitoredPipeline`];
//!   the dashboard's bounded, downsampled time series ([`monitor::series`]).
//! - [`serve`]: the registry of serving versions (atomic swaps), predictions
//!   over MQTT (bounded outbox), `edgeloop predict` on a CSV
//!   ([`serve::predict_file`]), the intake of models brought from elsewhere
//!   by upload or the models directory ([`serve::intake`]), and the fleet's
//!   model exchange over the broker ([`serve::fleet`], `[fleet]`: publish
//!   each serving version, hand others' to the learner, which judges them
//!   as its own challengers).
//! - [`learn`]: one room per concern: [`learn::families`] (one file per
//!   family: [`learn::logistic`], [`learn::linear`] (linear and ridge),
//!   [`learn::mlp`], [`learn::tree`], [`learn::forest`], [`learn::svm`],
//!   each with its config, fit, predict and ONNX export) behind
//!   [`learn::Model`]; [`learn::eval`] (metrics equal to scikit-learn's,
//!   the temporal holdout and k-fold splits, selection, model cards); the
//!   one training path [`learn::train_dataset`] (candidates, `auto`
//!   selection, champion/challenger); its section
//!   [`learn::PipelineSettings`] and [`learn::ModelConfig`]
//!   ([`learn::settings`]); `edgeloop train` from a CSV
//!   ([`learn::offline`]), hyperparameter search within a budget
//!   ([`learn::tune`]), ensembles ([`learn::ensemble`]), the preparation of
//!   training parts only ([`learn::prepare`]), cleaning by markers and
//!   ranges, also in the exported graph ([`learn::clean`]), the fitted
//!   preprocessing steps a model carries in its graph
//!   ([`learn::preprocess`]), head fine-tuning
//!   ([`learn::head`]) and online learners of one sample at a time
//!   following River ([`learn::online`]: `online_logistic`,
//!   `hoeffding_tree`, `hoeffding_adaptive_tree`, `arf`, and the regressors
//!   `hoeffding_tree` and `arf` ([`learn::online::OnlineRegression`]); their
//!   ONNX export,
//!   [`learn::online::export`]) and the concept-drift detectors
//!   ([`learn::drift`]: ADWIN, DDM, Page-Hinkley).
//! - [`onnx`]: the ONNX graph builder, the engines ([`onnx::engine`]: tract
//!   with edgeloop's operators registered, onnxruntime with the feature
//!   `ort`, `auto` fallback, typed refusal of unsupported operators),
//!   edgeloop's own tree-ensemble operator for tract
//!   ([`onnx::tree_ensemble`]) and the other `ai.onnx.ml` operators tract
//!   lacks ([`onnx::ml`]).
//! - [`features`]: the [`features::dataset::Dataset`] every learner works
//!   on; preprocessing: mean imputation and standard scaling, the fitted
//!   steps of `[pipelines.preprocess]` ([`features::preprocess`]: imputers,
//!   outlier bounds, scalers, PCA), augmentation of
//!   training rows ([`features::augment`]), class balance
//!   ([`features::balance`]), per-device sliding-window statistics
//!   ([`features::windows`]) and temporal features (lags, deltas, rolling
//!   statistics, the last label; [`features::temporal`], one code path for
//!   training, live scoring, the MQTT predictor and HTTP predict). [`health`]: the one verdict (ingest stalled,
//!   broker lost, store refusing writes) behind `GET /healthz`, the systemd
//!   watchdog and `edgeloop_healthy`.
//! - [`ingest`]: the MQTT source (rumqttc, MQTT 5 with a fallback to 3.1.1
//!   over one protocol-neutral connection, [`ingest::link`]; a commit's
//!   acknowledgements in one write over either protocol, through
//!   `vendor/rumqttc`, rumqttc 0.25.1 with its v5 connection public; persistent
//!   session, immediate then capped jittered reconnects, TLS with rustls
//!   for `mqtts://`, username/password; [`ingest::mqtt_config`]), payload
//!   decoding by the pipeline's [`ingest::decode::Schema`], the writer that commits then
//!   acknowledges ([`ingest::writer::Route`]), the embedded broker (rumqttd
//!   behind edgeloop's proxy, which admits its users and keeps the daemon's
//!   client ids to the daemon; feature `embedded-broker`), CSV replay and
//!   labelled CSV files for the offline commands ([`ingest::csv_file`]).
//! - [`store`]: redb: samples (with QoS 1 dedup), models, state, retention;
//!   every commit in quick-repair mode, so the open after a crash is quick;
//!   [`stats`]: counters shared by the components; [`config_error`]: the
//!   error of a setting.
//!
//! Data flow: `MqttSource → Writer → Store`; after each commit the writer
//! hands the packet ids back to the source, which acknowledges them, wakes the `Learner` (labelled samples) and hands
//! unlabelled samples to the `Predictor`, whose predictions the `Publisher`
//! sends from the outbox. The `Learner` trains from the `Store` and promotes
//! through the `Registry`, which the HTTP API and the `Predictor` read.
//! ARCHITECTURE.md draws the same.

pub mod bench;
pub mod cli;
pub mod config;
pub mod config_error;
pub mod daemon;
pub mod demo;
pub mod features;
pub mod health;
pub mod http;
pub mod ingest;
pub mod learn;
pub mod metrics;
pub mod monitor;
pub mod onnx;
pub mod serve;
pub mod stats;
pub mod store;
