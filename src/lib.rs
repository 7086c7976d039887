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
//! config → ingest → store → features → learn → onnx → serve → monitor → daemon
//! ```
//!
//! - [`config`]: typed configuration in layers (compiled-in default, file,
//!   `EDGELOOP__SECTION__KEY`), validated before anything starts.
//! - [`ingest`]: the MQTT source (rumqttc, persistent session, capped jittered
//!   back-off, TLS with rustls for `mqtts://` brokers, username/password), payload decoding by the pipeline's schema ([`ingest::decode`]),
//!   the writer that commits then acknowledges, the embedded broker
//!   (rumqttd, feature `embedded-broker`), CSV replay and labelled CSV files
//!   for the offline commands ([`ingest::csv_file`]).
//! - [`store`]: redb: samples (with QoS 1 dedup), models, state, retention.
//! - [`features`]: preprocessing: mean imputation and standard scaling,
//!   augmentation of training rows ([`features::augment`]: jitter, scaling,
//!   time shift, window slicing, mixup), class balance
//!   ([`features::balance`]) and per-device sliding-window statistics
//!   ([`features::windows`]).
//! - [`learn`]: datasets, the temporal holdout and k-fold splits
//!   ([`learn::split`]), one trainer module per family ([`learn::logistic`],
//!   [`learn::linear`] (linear and ridge), [`learn::mlp`], [`learn::tree`],
//!   [`learn::forest`], [`learn::svm`]) behind [`learn::Model`], the one
//!   training path [`learn::train_dataset`] (candidates, `auto` selection,
//!   champion/challenger), metrics equal to scikit-learn's, model cards and
//!   their side-by-side table, `edgeloop train` from a CSV
//!   ([`learn::offline`]), hyperparameter search within a budget
//!   ([`learn::tune`], `edgeloop tune`), ensembles of the best candidates
//!   (soft voting, stacking; [`learn::ensemble`]) and the preparation of
//!   training parts only, after every split ([`learn::prepare`]); head
//!   fine-tuning of an imported classifier network ([`learn::head`],
//!   `edgeloop finetune`).
//! - [`onnx`]: the ONNX graph builder and every family's export (standard
//!   operators; `ai.onnx.ml` tree ensembles), and edgeloop's own tree-ensemble
//!   operator for tract ([`onnx::tree_ensemble`]) and the other `ai.onnx.ml`
//!   operators tract lacks, for models made elsewhere ([`onnx::ml`]).
//! - [`serve`]: the engines ([`serve::engine`]: tract with edgeloop's
//!   operators registered, onnxruntime with the feature `ort`, `auto`
//!   fallback, typed refusal of unsupported operators), the registry of
//!   serving versions (atomic swaps), predictions over MQTT (bounded outbox),
//!   the HTTP API (axum), `edgeloop predict` on a CSV
//!   ([`serve::predict_file`]), the intake of models brought from elsewhere
//!   by upload or the models directory ([`serve::intake`]).
//! - [`monitor`]: the learner and its retraining policy; concept-drift
//!   detectors (ADWIN, DDM, Page-Hinkley) and data drift (PSI, KS); the
//!   continuous-learning loop (champion/challenger, reservoir of old regimes)
//!   and its prequential replay.
//! - [`daemon`]: wiring, ordered shutdown within a deadline, component
//!   supervision, systemd notification (`READY`, `STOPPING`, `STATUS`,
//!   watchdog) and what a SIGHUP reload may apply ([`daemon::reload_plan`]).
//! - [`metrics`]: `GET /metrics` in Prometheus text, read from [`stats`],
//!   the store, the registry and the drift board at scrape time.
//! - [`bench`](mod@bench): `edgeloop bench footprint` (binary sizes, memory, time to
//!   ready).
//! - [`demo`]: the end-to-end demo on the UCI Occupancy data.
//! - [`cli`]: the command line (`src/main.rs` calls [`cli::main`]), one
//!   file per command family.
//! - [`stats`]: counters shared by the components.
//! - [`health`]: the one verdict (ingest stalled, broker lost, store refusing
//!   writes) behind `GET /healthz`, the systemd watchdog and `edgeloop_healthy`.
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
