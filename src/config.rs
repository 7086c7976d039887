//! Typed configuration, loaded in layers with the `config` crate and validated
//! before anything starts.
//!
//! Layers, later ones win: the compiled-in default (`config/edgeloop.toml`,
//! every key documented there) → the file given with `--config` → environment
//! variables `EDGELOOP__SECTION__KEY`. Unknown keys are refused
//! (`deny_unknown_fields`); [`Config::validate`] checks values and names the
//! key of the first problem.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The compiled-in default configuration.
pub const DEFAULT_TOML: &str = include_str!("../config/edgeloop.toml");

pub use crate::config_error::ConfigError;

/// The whole configuration. See `config/edgeloop.toml` for every key's meaning.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub store: StoreConfig,
    pub mqtt: MqttConfig,
    pub http: HttpConfig,
    /// `[onnxruntime]`: the library of the `ort` engine.
    #[serde(default)]
    pub onnxruntime: OnnxruntimeConfig,
    /// `[models]`: intake of ONNX models brought from elsewhere.
    #[serde(default)]
    pub models: ModelsConfig,
    #[serde(default)]
    pub daemon: DaemonConfig,
    /// `[fleet]`: models shared with other daemons over the broker.
    #[serde(default)]
    pub fleet: FleetConfig,
    #[serde(default)]
    pub pipelines: Vec<PipelineConfig>,
}

pub use crate::serve::fleet::FleetConfig;

pub use crate::onnx::engine::OnnxruntimeConfig;

impl Config {
    /// How the pipeline at `index` loads its models: its engine and the
    /// load options (the onnxruntime library of `[onnxruntime]`).
    pub fn engine_of(
        &self,
        index: usize,
    ) -> (
        crate::onnx::engine::EngineKind,
        crate::onnx::engine::LoadOptions,
    ) {
        let kind = self
            .pipelines
            .get(index)
            .map(|p| p.engine)
            .unwrap_or_default();
        let library = &self.onnxruntime.library;
        let options = crate::onnx::engine::LoadOptions {
            input_width: None,
            ort_library: (!library.as_os_str().is_empty()).then(|| library.clone()),
        };
        (kind, options)
    }
}

pub use crate::serve::intake::ModelsConfig;

/// `[daemon]`: how the daemon process logs and stops, and its id. The
/// shutdown timeout and the log filter are reloaded on SIGHUP (see
/// [`crate::daemon::reload_plan`]); the others are read at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Longest wait, seconds, for an orderly shutdown after SIGTERM/SIGINT;
    /// past it the daemon exits non-zero naming what did not finish.
    pub shutdown_timeout_s: u64,
    /// Log filter, tracing `EnvFilter` syntax (`--log-level` wins when given).
    pub log_filter: String,
    /// Seconds without a commit while messages wait after which ingest
    /// counts as stalled: `/healthz` answers 503 and the systemd watchdog is
    /// no longer fed (read at start; a change needs a restart).
    pub stall_timeout_s: u64,
    /// This daemon's id in a fleet: when set, the `instance` label of every
    /// metric on `/metrics` (read at start); empty (the default): no such
    /// label, Prometheus's own `instance` target label tells daemons apart.
    pub instance: String,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            shutdown_timeout_s: 10,
            log_filter: DEFAULT_LOG_FILTER.into(),
            stall_timeout_s: 15,
            instance: String::new(),
        }
    }
}

/// The default log filter: info, and rumqttd's router and link targets
/// silenced (they log every ordinary client disconnect at ERROR).
pub const DEFAULT_LOG_FILTER: &str =
    "info,rumqttd=warn,rumqttd::router::routing=off,rumqttd::server::broker=off";

pub use crate::store::StoreConfig;

pub use crate::ingest::mqtt_config::{parse_mqtt_url, BrokerTarget, MqttConfig};

/// `[http]`: the local API, its access control and its limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    pub max_rows: usize,
    /// File holding the bearer token (its first line, surrounding white
    /// space removed; at least 16 characters). Empty: no token, unless
    /// `token` is set.
    #[serde(default)]
    pub token_file: PathBuf,
    /// The token itself, for `EDGELOOP__HTTP__TOKEN`; it wins over
    /// `token_file`. Never printed by `check-config`.
    #[serde(default)]
    pub token: String,
    /// Which requests need the token once one is set.
    #[serde(default)]
    pub auth: HttpAuth,
    /// PEM certificate chain and private key: the API is served over HTTPS
    /// (TLS 1.2/1.3, rustls) instead of plain HTTP. Both or neither.
    #[serde(default)]
    pub tls_cert_file: PathBuf,
    #[serde(default)]
    pub tls_key_file: PathBuf,
    /// Seconds a client has to send a request's head; also how long an idle
    /// keep-alive connection (or one that never sends a byte) is kept
    /// (hyper's `header_read_timeout` runs while the connection waits for a
    /// head). A TLS handshake has the same time.
    #[serde(default = "default_header_timeout_s")]
    pub header_timeout_s: u64,
    /// Seconds a request's body may take to arrive once its head is read
    /// (tower-http `RequestBodyTimeoutLayer`); a body still arriving is cut
    /// with 408.
    #[serde(default = "default_body_timeout_s")]
    pub body_timeout_s: u64,
    /// Connections served at once; further ones wait in the kernel's
    /// accept queue until one closes.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Largest request body, bytes, on every route but the model upload
    /// (`PUT …/models`, `[models] max_bytes`); 413 beyond.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
}

/// `http.auth`: which requests need the bearer token once one is set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpAuth {
    /// Requests that change what the daemon learns or serves: train,
    /// promote, rollback, model uploads. Reads and predictions are open.
    #[default]
    Writes,
    /// Every request but `GET /healthz` (liveness probes stay open).
    All,
}

impl HttpAuth {
    /// The key's value as written in the configuration (`writes`, `all`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Writes => "writes",
            Self::All => "all",
        }
    }
}

fn default_header_timeout_s() -> u64 {
    10
}
fn default_body_timeout_s() -> u64 {
    30
}
fn default_max_connections() -> usize {
    512
}
fn default_max_body_bytes() -> usize {
    2 * 1024 * 1024
}

/// Shortest bearer token accepted, characters.
pub const MIN_TOKEN_CHARS: usize = 16;

impl HttpConfig {
    /// The bearer token: `token`, else the first line of `token_file`;
    /// `None` when neither is set.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming `http.token_file` (unreadable) or the
    /// key that holds a token shorter than [`MIN_TOKEN_CHARS`].
    pub fn bearer_token(&self) -> Result<Option<String>, ConfigError> {
        let (key, token) = if !self.token.is_empty() {
            ("http.token", self.token.trim().to_string())
        } else if !self.token_file.as_os_str().is_empty() {
            let text =
                std::fs::read_to_string(&self.token_file).map_err(|e| ConfigError::Invalid {
                    key: "http.token_file".into(),
                    reason: format!("cannot read {}: {e}", self.token_file.display()),
                })?;
            let line = text.lines().next().unwrap_or("").trim().to_string();
            ("http.token_file", line)
        } else {
            return Ok(None);
        };
        if token.chars().count() < MIN_TOKEN_CHARS {
            return Err(ConfigError::Invalid {
                key: key.into(),
                reason: format!(
                    "the token has {} characters; at least {MIN_TOKEN_CHARS} are needed \
                     (e.g. `head -c 24 /dev/urandom | base64`)",
                    token.chars().count()
                ),
            });
        }
        Ok(Some(token))
    }

    /// Whether the API is served over HTTPS.
    pub fn tls(&self) -> bool {
        !self.tls_cert_file.as_os_str().is_empty()
    }

    /// The HTTPS server configuration, when `tls_cert_file` is set.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key: one of the two files set
    /// without the other, or a file that cannot be used.
    pub fn tls_server_config(&self) -> Result<Option<rustls::ServerConfig>, ConfigError> {
        crate::ingest::mqtt::optional_tls_server_config(
            &self.tls_cert_file,
            &self.tls_key_file,
            ("http.tls_cert_file", "http.tls_key_file"),
        )
    }

    /// Checks the token, the TLS files, the limits, and that a listener
    /// beyond loopback has a token.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let token = self.bearer_token()?;
        self.tls_server_config()?;
        if !self.listen.ip().is_loopback() && token.is_none() {
            return Err(ConfigError::Invalid {
                key: "http.listen".into(),
                reason: format!(
                    "{} is reachable beyond this machine, and no token is set: anyone who \
                     reaches it could replace the served model. Set http.token_file (or \
                     EDGELOOP__HTTP__TOKEN), or listen on 127.0.0.1",
                    self.listen
                ),
            });
        }
        for (key, v) in [
            ("http.header_timeout_s", self.header_timeout_s),
            ("http.body_timeout_s", self.body_timeout_s),
            ("http.max_connections", self.max_connections as u64),
            ("http.max_body_bytes", self.max_body_bytes as u64),
        ] {
            if v == 0 {
                return Err(ConfigError::Invalid {
                    key: key.into(),
                    reason: "must be at least 1".into(),
                });
            }
        }
        Ok(())
    }
}

pub use crate::ingest::writer::Dedup;
pub use crate::learn::model::{Family, Task};
pub use crate::learn::select::{Evaluation, Metric};

/// One `[[pipelines]]` entry: a stream of samples and the model learnt from it.
///
/// Fields left out of a user's file take the defaults below, which equal the
/// example pipeline of `config/edgeloop.toml` (a test holds them equal).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    pub name: String,
    pub topics: Vec<String>,
    #[serde(default = "default_device_level")]
    pub device_level: i32,
    pub features: Vec<String>,
    /// `[pipelines.preprocess]`: cleaning rules (missing-value markers,
    /// valid ranges) and fitted steps (imputation, outliers, scaling, PCA),
    /// in training and in the exported model.
    #[serde(default)]
    pub preprocess: crate::learn::preprocess::PreprocessConfig,
    /// `[pipelines.anomaly]`: Half-Space Trees scores of predicted readings.
    #[serde(default)]
    pub anomaly: crate::learn::anomaly::AnomalyConfig,
    #[serde(default)]
    pub label: String,
    /// Topic filters on which labels arrive after their samples (late labels).
    #[serde(default)]
    pub label_topics: Vec<String>,
    /// Field of a late label that holds the sample's id (`sample_id` of the
    /// prediction message); without it a label is matched by device and timestamp.
    #[serde(default = "default_sample_id_field")]
    pub sample_id_field: String,
    /// The classes a label may take; empty: any string or number (and
    /// required empty for regression, whose labels are numbers).
    #[serde(default)]
    pub classes: Vec<String>,
    /// Deduplication of QoS 1 redeliveries; see [`Dedup`].
    #[serde(default)]
    pub dedup: Dedup,
    #[serde(default)]
    pub timestamp: String,
    #[serde(default = "default_timestamp_format")]
    pub timestamp_format: String,
    #[serde(default = "default_task")]
    pub task: Task,
    #[serde(default = "default_prediction_topic")]
    pub prediction_topic: String,
    /// The engine serving this pipeline's models: `tract` (default), `ort`
    /// (onnxruntime, cargo feature `ort`) or `auto` (tract, onnxruntime when
    /// tract refuses a model).
    #[serde(default)]
    pub engine: crate::onnx::engine::EngineKind,
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub drift: DriftConfig,
    /// `[pipelines.windows]`: windowed features; `features` then lists the
    /// raw channels and the model learns from their window statistics
    /// ([`PipelineConfig::model_features`]).
    #[serde(default)]
    pub windows: crate::features::windows::WindowsConfig,
    /// `[pipelines.temporal]`: each reading's model row also holds its
    /// device's earlier readings (lags, deltas, rolling mean and standard
    /// deviation) and last known label ([`crate::features::temporal`]).
    #[serde(default)]
    pub temporal: crate::features::temporal::TemporalConfig,
    /// `[pipelines.online]`: an online learner that learns every label and
    /// serves when more accurate than the batch champion
    /// ([`crate::monitor::online`]).
    #[serde(default)]
    pub online: crate::monitor::online::OnlineConfig,
}

impl PipelineConfig {
    /// `[pipelines.temporal] last_label` without a declared class list (or
    /// on a regression pipeline).
    fn last_label_unusable(&self) -> bool {
        self.temporal.last_label && (self.task == Task::Regression || self.classes.is_empty())
    }

    /// The model's input features: `features` itself, or for a windowed
    /// pipeline the window statistics `{channel}_{stat}`
    /// ([`crate::features::windows::WindowsConfig::feature_names`]).
    pub fn model_features(&self) -> Vec<String> {
        self.settings().model_features()
    }

    /// The learning and serving stages' section.
    pub fn settings(&self) -> crate::learn::PipelineSettings {
        crate::learn::PipelineSettings {
            name: self.name.clone(),
            features: self.features.clone(),
            label: self.label.clone(),
            classes: self.classes.clone(),
            task: self.task,
            windows: self.windows.clone(),
            temporal: self.temporal.clone(),
            model: crate::learn::ModelConfig {
                preprocess: self.preprocess.clone(),
                ..self.model.clone()
            },
            engine: self.engine,
            prediction_topic: self.prediction_topic.clone(),
            anomaly: self.anomaly.clone(),
        }
    }

    /// The monitoring stage's section: the settings and `[pipelines.drift]`.
    pub fn monitored(&self) -> crate::monitor::MonitoredPipeline {
        crate::monitor::MonitoredPipeline {
            settings: self.settings(),
            drift: self.drift.clone(),
            online: self.online.clone(),
        }
    }

    /// How the decoder reads this pipeline's payloads.
    pub fn schema(&self) -> crate::ingest::decode::Schema {
        crate::ingest::decode::Schema {
            features: self.features.clone(),
            label: self.label.clone(),
            classes: self.classes.clone(),
            task: self.task,
            timestamp: self.timestamp.clone(),
            timestamp_format: self.timestamp_format.clone(),
            device_level: self.device_level,
            sample_id_field: self.sample_id_field.clone(),
            categorical: self.preprocess.categorical.clone(),
            categories: self.preprocess.categories.clone(),
        }
    }

    /// Which messages the writer routes to this pipeline, and how (the
    /// topic filters of shared subscriptions without their `$share/{group}/`).
    pub fn route(&self) -> crate::ingest::writer::Route {
        use crate::ingest::mqtt_config::topic_filter;
        crate::ingest::writer::Route {
            name: self.name.clone(),
            topics: self
                .topics
                .iter()
                .map(|t| topic_filter(t).to_string())
                .collect(),
            label_topics: self.label_topics.clone(),
            dedup: self.dedup,
            timestamp: self.timestamp.clone(),
            schema: self.schema(),
            // The anomaly scorer scores (and learns) labelled readings too.
            predict_labelled: self.temporal.is_enabled()
                || self.windows.enabled
                || self.anomaly.enabled,
        }
    }
}

fn default_sample_id_field() -> String {
    "sample_id".into()
}
fn default_device_level() -> i32 {
    1
}
fn default_timestamp_format() -> String {
    "%Y-%m-%d %H:%M:%S".into()
}
fn default_task() -> Task {
    Task::Classification
}
fn default_prediction_topic() -> String {
    "edgeloop/{pipeline}/predictions/{device}".into()
}

pub use crate::monitor::DriftConfig;

pub use crate::learn::settings::{validate_model, ModelConfig};

impl Config {
    /// Loads the layers (default, then `file` if given, then the environment)
    /// and validates the result.
    ///
    /// # Errors
    /// [`ConfigError::Load`] when a layer cannot be read or holds an unknown
    /// key or a value of the wrong type; [`ConfigError::Invalid`] from
    /// [`Config::validate`].
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// As [`Config::load`], with the environment given explicitly (tests).
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        use config::{Environment, File, FileFormat};
        let mut builder =
            config::Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::Load(format!(
                    "config file {} does not exist or is not a file",
                    path.display()
                )));
            }
            if let Some((key, written)) = std::fs::read_to_string(path)
                .ok()
                .and_then(|text| file_integer_out_of_range(&text))
            {
                return Err(ConfigError::Invalid {
                    key,
                    reason: format!(
                        "{written} (in {}) is out of range for this integer (at most {INTEGER_MAX})",
                        path.display()
                    ),
                });
            }
            builder = builder.add_source(File::from(path).format(FileFormat::Toml));
        }
        let all: std::collections::HashMap<String, String> = env.into_iter().collect();
        let env: std::collections::HashMap<String, String> = all
            .iter()
            .filter(|(k, _)| k.starts_with("EDGELOOP__"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        builder = builder.add_source(
            Environment::with_prefix("EDGELOOP")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(env.clone())),
        );
        let raw = builder
            .build()
            .map_err(|e| ConfigError::Load(describe(e, file)))?;
        let layered: serde_json::Value = raw
            .clone()
            .try_deserialize()
            .map_err(|e| ConfigError::Load(describe(e, file)))?;
        let mut cfg: Config = raw.try_deserialize().map_err(|e| {
            let mut message = describe(e, file);
            if let Some(expected) = expected_variants(&message, &layered) {
                message = format!("{message}; {expected}");
            }
            if let Some(written) = socket_address_written(&message, &layered) {
                message = format!(
                    "{message}: `{written}` is not an IP address and port (IP:PORT with a \
                     port in 0..=65535: `127.0.0.1:8080`, `0.0.0.0:8080`, `[::1]:8080`; a \
                     host name such as `localhost` is not resolved)"
                );
            }
            ConfigError::Load(message)
        })?;
        let typed = serde_json::to_value(&cfg).map_err(|e| ConfigError::Load(e.to_string()))?;
        if let Some((key, written, limit)) = rounded_integer(String::new(), &layered, &typed) {
            // As written, when it came from the environment (a float prints
            // another number than the digits it was read from).
            let name = format!("EDGELOOP__{}", key.to_uppercase().replace('.', "__"));
            let written = match env.get(&name) {
                Some(v) => format!("`{v}` (environment {name})"),
                None => written.to_string(),
            };
            let reason = match limit {
                Some(limit) => format!("{written} is out of range for this integer ({limit})"),
                None => format!("{written} is not a whole number"),
            };
            return Err(ConfigError::Invalid { key, reason });
        }
        if cfg.store.path.as_os_str().is_empty() {
            cfg.store.path = crate::store::default_store_path(|k| all.get(k).cloned());
            cfg.store.create_dir = true;
        }
        cfg.validate()?;
        for [(first, first_filter), (second, second_filter)] in cfg.overlapping_pipelines() {
            tracing::warn!(
                first,
                first_filter,
                second,
                second_filter,
                "Topic filters of two pipelines overlap: a message matching both is stored by each."
            );
        }
        for sub in cfg.subscriptions().iter().filter(|s| s.is_joined()) {
            tracing::warn!(
                subscription = %sub.filter,
                filters = ?sub.covers,
                "Topic filters that overlap partly are subscribed as one covering filter (the broker \
                 would send a message matching several of them once per subscription): the broker \
                 also sends the topics it covers that none of them matches, which are acknowledged \
                 and counted as unrouted, not stored."
            );
            let filter = crate::ingest::mqtt_config::topic_filter(&sub.filter);
            for p in &cfg.pipelines {
                let out = p
                    .prediction_topic
                    .replace("{pipeline}", &p.name)
                    .replace("{device}", "x");
                if !p.prediction_topic.is_empty() && rumqttc::matches(&out, filter) {
                    tracing::warn!(
                        subscription = %sub.filter,
                        pipeline = %p.name,
                        prediction_topic = %p.prediction_topic,
                        "The covering filter matches the pipeline's prediction topic: each \
                         prediction the daemon publishes comes back to it (counted as unrouted)."
                    );
                }
            }
        }
        Ok(cfg)
    }

    /// Checks that every pipeline with `engine = "ort"` can load models:
    /// the onnxruntime library of `[onnxruntime] library` (or
    /// `ORT_DYLIB_PATH`) loads, and stays loaded in this process. Made by
    /// `check-config` and `run` before anything starts: a daemon that
    /// started without its engine would store and train but serve nothing.
    /// `engine = "auto"` is not checked (it serves on tract alone when
    /// onnxruntime is unavailable).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming `pipelines[i].engine`, the library
    /// path tried, where it came from and why it did not load.
    pub fn check_engines(&self) -> Result<(), ConfigError> {
        for (i, p) in self.pipelines.iter().enumerate() {
            let (kind, options) = self.engine_of(i);
            if kind != crate::onnx::engine::EngineKind::Ort {
                continue;
            }
            crate::onnx::engine::check_available(kind, &options).map_err(|e| {
                ConfigError::Invalid {
                    key: format!("pipelines[{i}].engine"),
                    reason: format!(
                        "\"ort\" (onnxruntime) for pipeline `{}`: {e}; set `[onnxruntime] \
                         library` (or ORT_DYLIB_PATH) to libonnxruntime 1.31 or newer, or use \
                         engine = \"tract\" or \"auto\"",
                        p.name
                    ),
                }
            })?;
        }
        Ok(())
    }

    /// Checks that the store's directory exists and this user may write
    /// there (for the default location: that it can be created), the check
    /// `check-config` and `run` make before anything starts.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming `store.path` and what is wrong.
    pub fn check_store_dir(&self) -> Result<(), ConfigError> {
        let bad = |reason: String| ConfigError::Invalid {
            key: "store.path".into(),
            reason,
        };
        let dir = match self.store.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        if !dir.is_dir() {
            if !self.store.create_dir {
                return Err(bad(format!(
                    "directory {} does not exist; create it or set store.path",
                    dir.display()
                )));
            }
            std::fs::create_dir_all(&dir).map_err(|e| {
                bad(format!(
                    "cannot create the default directory {}: {e}",
                    dir.display()
                ))
            })?;
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        }
        // A floor the file system can never clear would refuse every sample.
        if let Ok((_, total)) = crate::store::fs_bytes(&dir) {
            if total > 0 && self.store.min_free_bytes >= total {
                return Err(ConfigError::Invalid {
                    key: "store.min_free_bytes".into(),
                    reason: format!(
                        "{} is not below the size of the file system holding {} ({total} bytes): \
                         no sample would ever be stored",
                        self.store.min_free_bytes,
                        dir.display()
                    ),
                });
            }
        }
        // A full disk is not this check's business: the daemon starts and
        // refuses ingest until there is room again.
        match tempfile::NamedTempFile::new_in(&dir) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
                ) =>
            {
                Err(bad(format!(
                    "cannot write in {} as this user: {e}",
                    dir.display()
                )))
            }
            _ => Ok(()),
        }
    }

    /// Checks every value; the first problem is returned naming its key.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] with the key (e.g. `pipelines[0].model.l2`)
    /// and the reason.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: String, reason: String| Err(ConfigError::Invalid { key, reason });
        self.mqtt.validate_security()?;
        self.http.validate()?;
        if self.store.path.is_dir() {
            return bad(
                "store.path".into(),
                format!(
                    "{} is a directory; give a file path",
                    self.store.path.display()
                ),
            );
        }
        if self.models.poll_ms == 0 {
            return bad("models.poll_ms".into(), "must be at least 1".into());
        }
        if self.models.max_bytes == 0 {
            return bad("models.max_bytes".into(), "must be at least 1".into());
        }
        if self.store.batch_size == 0 {
            return bad("store.batch_size".into(), "must be at least 1".into());
        }
        if self.daemon.shutdown_timeout_s == 0 {
            return bad(
                "daemon.shutdown_timeout_s".into(),
                "must be at least 1".into(),
            );
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.daemon.log_filter) {
            return bad("daemon.log_filter".into(), e.to_string());
        }
        if self.store.retention_chunk == 0 {
            return bad("store.retention_chunk".into(), "must be at least 1".into());
        }
        if self.mqtt.client_id.is_empty() || self.mqtt.client_id.len() > 19 {
            return bad(
                "mqtt.client_id".into(),
                "must be 1 to 19 characters (MQTT 3.1.1 §3.1.3.1 allows 23; \
                 edgeloop adds `-out` for its prediction connection)"
                    .into(),
            );
        }
        // rumqttd refuses these in a client id (its router's
        // `validate_clientid`); the daemon could never connect.
        if self.mqtt.broker == "embedded" && self.mqtt.client_id.contains(['+', '$', '#', '/']) {
            return bad(
                "mqtt.client_id".into(),
                "must not hold + $ # or / with the embedded broker, which refuses such client ids"
                    .into(),
            );
        }
        if !(5..=65535).contains(&self.mqtt.keep_alive_s) {
            return bad("mqtt.keep_alive_s".into(), "must be in 5..=65535".into());
        }
        if self.mqtt.reconnect_min_ms == 0
            || self.mqtt.reconnect_min_ms > self.mqtt.reconnect_max_ms
        {
            return bad(
                "mqtt.reconnect_min_ms".into(),
                "must be at least 1 and at most mqtt.reconnect_max_ms".into(),
            );
        }
        if self.mqtt.ingest_max_payload_bytes == 0
            || self.mqtt.ingest_max_payload_bytes > self.mqtt.max_packet_bytes
        {
            return bad(
                "mqtt.ingest_max_payload_bytes".into(),
                "must be at least 1 and at most mqtt.max_packet_bytes".into(),
            );
        }
        if self.mqtt.outbox_capacity == 0 {
            return bad("mqtt.outbox_capacity".into(), "must be at least 1".into());
        }
        if self.http.max_rows == 0 {
            return bad("http.max_rows".into(), "must be at least 1".into());
        }
        if self.fleet.enabled() && self.mqtt.broker == "embedded" {
            return bad(
                "fleet".into(),
                "publish and adopt share models through a broker every daemon of the fleet \
                 reaches: the embedded broker serves this daemon alone (set mqtt.broker to \
                 the fleet's broker)"
                    .into(),
            );
        }
        let prefix = &self.fleet.topic_prefix;
        if prefix.is_empty()
            || prefix.starts_with('$')
            || prefix.ends_with('/')
            || !rumqttc::valid_topic(prefix)
        {
            return bad(
                "fleet.topic_prefix".into(),
                format!("`{prefix}` must be a topic name without wildcards, not starting with `$` or ending with `/`"),
            );
        }
        if self.fleet.max_bytes < 1024 || self.fleet.max_bytes > self.mqtt.max_packet_bytes as u64 {
            return bad(
                "fleet.max_bytes".into(),
                "must be at least 1024 and at most mqtt.max_packet_bytes (the fleet connection's packet limit)".into(),
            );
        }
        let mut names = std::collections::HashSet::new();
        for (i, p) in self.pipelines.iter().enumerate() {
            let key = |k: &str| format!("pipelines[{i}].{k}");
            if p.engine == crate::onnx::engine::EngineKind::Ort
                && !crate::onnx::engine::ORT_COMPILED
            {
                return bad(
                    key("engine"),
                    "\"ort\" needs edgeloop built with the cargo feature `ort` \
                     (cargo build --features ort); use \"tract\" or \"auto\""
                        .into(),
                );
            }
            let name_ok = !p.name.is_empty()
                && p.name.len() <= 64
                && p.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !name_ok {
                return bad(
                    key("name"),
                    format!("`{}` must match [A-Za-z0-9_-]{{1,64}}", p.name),
                );
            }
            if !names.insert(p.name.as_str()) {
                return bad(key("name"), format!("`{}` is declared twice", p.name));
            }
            if p.topics.is_empty() {
                return bad(
                    key("topics"),
                    "at least one topic filter is required".into(),
                );
            }
            for t in &p.topics {
                if !crate::ingest::mqtt_config::valid_subscription(t) {
                    let why = crate::ingest::mqtt_config::subscription_problem(t)
                        .unwrap_or_else(|| "not a valid MQTT topic filter".into());
                    return bad(
                        key("topics"),
                        format!("`{t}` is not a valid MQTT topic filter or shared subscription ($share/{{group}}/{{filter}}): {why}"),
                    );
                }
                if crate::ingest::mqtt_config::shared(t).is_some() && self.mqtt.broker == "embedded"
                {
                    return bad(
                        key("topics"),
                        format!("`{t}` is a shared subscription, which splits a stream between daemons on one external broker: the embedded broker serves this daemon alone (use the plain filter, or an external broker)"),
                    );
                }
            }
            for t in &p.label_topics {
                if t.starts_with("$share/") {
                    return bad(
                        key("label_topics"),
                        format!("`{t}` is a shared subscription: a late label must reach the daemon that stored its sample, so every daemon subscribes to all labels (use the plain filter)"),
                    );
                }
                if !rumqttc::valid_filter(t) {
                    let why = crate::ingest::mqtt_config::filter_problem(t)
                        .unwrap_or_else(|| "not a valid MQTT topic filter".into());
                    return bad(
                        key("label_topics"),
                        format!("`{t}` is not a valid MQTT topic filter: {why}"),
                    );
                }
                if p.topics.contains(t) {
                    return bad(key("label_topics"), format!("`{t}` is also a sample topic"));
                }
            }
            if p.features.is_empty() {
                return bad(key("features"), "at least one feature is required".into());
            }
            for f in &p.features {
                if let Err(e) = crate::ingest::decode::JsonPath::parse(f) {
                    return bad(key("features"), e);
                }
            }
            let mut seen = std::collections::HashSet::new();
            for f in &p.features {
                if !seen.insert(f) {
                    return bad(key("features"), format!("`{f}` is listed twice"));
                }
            }
            if !p.label.is_empty() && p.features.contains(&p.label) {
                return bad(
                    key("features"),
                    format!(
                        "`{}` is the label: a model given its own label as a feature learns \
                         nothing else, and an unlabelled reading (the ones it predicts) lacks it",
                        p.label
                    ),
                );
            }
            for (field, k) in [(&p.label, "label"), (&p.timestamp, "timestamp")] {
                if !field.is_empty() {
                    if let Err(e) = crate::ingest::decode::JsonPath::parse(field) {
                        return bad(key(k), e);
                    }
                }
            }
            for t in &p.topics {
                let out = p
                    .prediction_topic
                    .replace("{pipeline}", &p.name)
                    .replace("{device}", "x");
                if !p.prediction_topic.is_empty()
                    && rumqttc::matches(&out, crate::ingest::mqtt_config::topic_filter(t))
                {
                    return bad(
                        key("prediction_topic"),
                        format!("`{}` is matched by the input filter `{t}`: predictions would be ingested", p.prediction_topic),
                    );
                }
            }
            let unknown_placeholder = p
                .prediction_topic
                .replace("{pipeline}", "")
                .replace("{device}", "")
                .contains(['{', '}']);
            if unknown_placeholder {
                return bad(
                    key("prediction_topic"),
                    "only {pipeline} and {device} may be substituted".into(),
                );
            }
            let format_ok = chrono::format::StrftimeItems::new(&p.timestamp_format)
                .all(|i| !matches!(i, chrono::format::Item::Error));
            if !format_ok {
                return bad(
                    key("timestamp_format"),
                    format!("`{}` is not a strftime format", p.timestamp_format),
                );
            }
            if p.label.is_empty() {
                return bad(
                    key("label"),
                    format!("a {} pipeline needs a label field", p.task),
                );
            }
            if let Ok(level) = usize::try_from(p.device_level) {
                for t in p.topics.iter().chain(&p.label_topics) {
                    if !t.contains('#') && t.split('/').count() <= level {
                        return bad(
                            key("device_level"),
                            format!(
                                "topic filter `{t}` has no level {level} to read a device id from"
                            ),
                        );
                    }
                }
            }
            if p.device_level < -1 {
                return bad(
                    key("device_level"),
                    "must be -1 or a topic level index".into(),
                );
            }
            if !p.prediction_topic.is_empty() && !rumqttc::valid_topic(&p.prediction_topic) {
                return bad(
                    key("prediction_topic"),
                    "must be a topic name without wildcards".into(),
                );
            }
            if p.task == Task::Regression {
                if !p.classes.is_empty() {
                    return bad(
                        key("classes"),
                        "a regression pipeline's label is a number: leave `classes` empty".into(),
                    );
                }
                // DDM models a Bernoulli error rate; a regressor's error
                // stream (|y - ŷ|) is real-valued.
                if p.drift.detector == crate::monitor::continual::DetectorKind::Ddm {
                    return bad(
                        key("drift.detector"),
                        "`ddm` watches a 0/1 error stream; a regression pipeline's errors \
                         are |y - ŷ|: use `adwin` or `page_hinkley`"
                            .into(),
                    );
                }
            }
            validate_model(&p.model, Some(p.task), &key("model."))?;
            if let Err((k, reason)) = p.anomaly.validate() {
                return bad(key(&format!("anomaly.{k}")), reason);
            }
            if let Err(reason) = p.preprocess.validate(&p.features) {
                let (k, reason) = reason.split_once(": ").unwrap_or(("", &reason));
                return bad(key(&format!("preprocess.{k}")), reason.to_string());
            }
            if p.windows.enabled && !p.preprocess.categorical.is_empty() {
                return bad(
                    key("preprocess.categorical"),
                    "window statistics are numeric: not with [pipelines.windows] enabled".into(),
                );
            }
            match p.online.family() {
                Err(e) => return bad(key("online.family"), e),
                Ok(Some(_)) if p.windows.enabled => {
                    return bad(
                        key("online.family"),
                        "the online learners learn single readings: not for a windowed \
                         pipeline (use off)"
                            .into(),
                    );
                }
                Ok(Some(f))
                    if p.task == Task::Regression
                        && crate::learn::online::OnlineRegression::new(f, 1, 0).is_none() =>
                {
                    return bad(
                        key("online.family"),
                        format!(
                            "{f} has no regressor: for a regression pipeline, hoeffding_tree \
                             or arf (or off)"
                        ),
                    );
                }
                Ok(_) => {}
            }
            if p.temporal.is_enabled() {
                if let Err(e) = p.temporal.validate() {
                    let (k, reason) = e.split_once(": ").unwrap_or(("", &e));
                    return bad(key(&format!("temporal.{k}")), reason.to_string());
                }
                let refuse = if p.windows.enabled {
                    Some(("temporal", "a model row is a window or a reading with its past, not both: not with [pipelines.windows] enabled"))
                } else if !p.preprocess.categorical.is_empty() {
                    Some((
                        "temporal",
                        "lags and rolling statistics are numeric: not with categorical features",
                    ))
                } else if p.preprocess.impute == crate::features::preprocess::ImputeStrategy::Last {
                    Some(("preprocess.impute", "`last` carries a device's readings forward; with [pipelines.temporal] its lags already hold them (use mean or median)"))
                } else if p.last_label_unusable() {
                    Some(("temporal.last_label", "the last label is one-hot over the pipeline's declared `classes`: declare them, on a classification pipeline"))
                } else {
                    None
                };
                if let Some((k, reason)) = refuse {
                    return bad(key(k), reason.into());
                }
            }
            if let Err(e) = p.windows.validate() {
                let (k, reason) = e.split_once(": ").unwrap_or(("", &e));
                return bad(key(&format!("windows.{k}")), reason.to_string());
            }
            if p.windows.enabled && !p.model.reservoir_in_training {
                return bad(
                    key("model.reservoir_in_training"),
                    "a windowed pipeline trains on the windows of its newest `window` \
                     readings, without a reservoir: older readings drawn at random would \
                     cut the windows (use true)"
                        .into(),
                );
            }
            if let Err(e) = p.model.augment.window_indices(&p.model_features()) {
                let (k, reason) = e.split_once(": ").unwrap_or(("windows", &e));
                return bad(key(&format!("model.augment.{k}")), reason.to_string());
            }
            let d = &p.drift;
            if let Err((k, reason)) = d.validate() {
                return bad(key(&format!("drift.{k}")), reason);
            }
        }
        self.check_subscriptions()
    }

    /// Every pipeline's sample and label topic filters with the key that
    /// declares each (`pipelines[0].topics`) and its pipeline's name.
    fn topic_filters(&self) -> Vec<(String, &str, &str)> {
        let mut all = Vec::new();
        for (i, p) in self.pipelines.iter().enumerate() {
            for (k, filters) in [("topics", &p.topics), ("label_topics", &p.label_topics)] {
                for f in filters {
                    all.push((format!("pipelines[{i}].{k}"), p.name.as_str(), f.as_str()));
                }
            }
        }
        all
    }

    /// The subscriptions of the ingest connection for every pipeline's
    /// sample and label topics, with the configured filters each stands for
    /// ([`crate::ingest::mqtt_config::subscription_plan`]: partly
    /// overlapping filters of a kind are joined into one covering filter).
    pub fn subscriptions(&self) -> Vec<crate::ingest::mqtt_config::Subscription> {
        let all = self.topic_filters();
        let owned: Vec<String> = all.iter().map(|(_, _, f)| f.to_string()).collect();
        crate::ingest::mqtt_config::subscription_plan(&owned)
    }

    /// Refuses two subscriptions of different kinds (a plain filter and a
    /// shared one, or two share groups) that overlap. The broker delivers a
    /// message matching both once per subscription (MQTT 5.0 §3.3.4), and
    /// the writer routes each copy by topic to every pipeline whose filter
    /// matches, so each would store it twice. No one subscription can take
    /// their place: a plain one would bring this daemon every message the
    /// group shares out among its members (the others store theirs too), a
    /// shared one only this daemon's share of the plain filter's messages,
    /// and a subscription is in one group at most. Subscriptions of a kind
    /// never overlap ([`crate::ingest::mqtt_config::subscription_plan`]
    /// joins them); a covering filter it joined is checked as subscribed.
    fn check_subscriptions(&self) -> Result<(), ConfigError> {
        use crate::ingest::mqtt_config::{filters_overlap, shared, topic_filter};
        let all = self.topic_filters();
        let owner = |f: &str| all.iter().find(|(_, _, g)| *g == f);
        let kind = |s: &str| match shared(s) {
            Some((group, _)) => format!("shared in group `{group}`"),
            None => "plain".to_string(),
        };
        let subs = self.subscriptions();
        for (i, a) in subs.iter().enumerate() {
            for b in &subs[i + 1..] {
                // Of one kind, the plan joined them.
                if kind(&a.filter) == kind(&b.filter)
                    || !filters_overlap(topic_filter(&a.filter), topic_filter(&b.filter))
                {
                    continue;
                }
                // The configured filters to name: a pair that overlaps, or
                // the first each subscription stands for.
                let (fa, fb) = a
                    .covers
                    .iter()
                    .flat_map(|x| b.covers.iter().map(move |y| (x, y)))
                    .find(|(x, y)| filters_overlap(topic_filter(x), topic_filter(y)))
                    .unwrap_or((&a.covers[0], &b.covers[0]));
                let (Some((key_a, name_a, _)), Some((key, name_b, _))) = (owner(fa), owner(fb))
                else {
                    continue;
                };
                // A covering filter is named as subscribed when it, and not
                // the filters it was joined from, makes the overlap.
                let named = |s: &crate::ingest::mqtt_config::Subscription,
                             f: &str,
                             key: &str,
                             name: &str,
                             other: &str| {
                    if s.is_joined() && !filters_overlap(topic_filter(f), topic_filter(other)) {
                        let from: Vec<String> = s.covers.iter().map(|f| format!("`{f}`")).collect();
                        format!(
                            "`{}` ({}, the covering filter subscribed for {}, which overlap partly)",
                            s.filter,
                            kind(&s.filter),
                            from.join(", ")
                        )
                    } else {
                        format!("`{f}` ({key}, pipeline `{name}`, {})", kind(f))
                    }
                };
                return Err(ConfigError::Invalid {
                    key: key.clone(),
                    reason: format!(
                        "{} overlaps {}: the broker delivers a message matching both once per \
                         subscription (MQTT 5), and each copy would be stored; no one subscription \
                         can be both {} and {}, so use filters that do not overlap",
                        named(b, fb, key, name_b, fa),
                        named(a, fa, key_a, name_a, fb),
                        kind(fb),
                        kind(fa),
                    ),
                });
            }
        }
        Ok(())
    }

    /// Pairs of pipelines whose topic filters overlap, with the first such
    /// pair of filters of each: a message matching both is routed to each
    /// pipeline (the writer tries every pipeline) and stored once in each.
    /// [`Config::load_with_env`] logs each pair once (WARN).
    pub fn overlapping_pipelines(&self) -> Vec<[(&str, &str); 2]> {
        use crate::ingest::mqtt_config::{filters_overlap, topic_filter};
        let all = self.topic_filters();
        let mut pairs: Vec<[(&str, &str); 2]> = Vec::new();
        for (i, (_, name_a, a)) in all.iter().enumerate() {
            for (_, name_b, b) in &all[i + 1..] {
                if name_a != name_b
                    && !pairs
                        .iter()
                        .any(|[(x, _), (y, _)]| x == name_a && y == name_b)
                    && filters_overlap(topic_filter(a), topic_filter(b))
                {
                    pairs.push([(name_a, a), (name_b, b)]);
                }
            }
        }
        pairs
    }

    /// The pipeline named `name`, if configured.
    pub fn pipeline(&self, name: &str) -> Option<&PipelineConfig> {
        self.pipelines.iter().find(|p| p.name == name)
    }

    /// The effective configuration as TOML (what `check-config` prints),
    /// with a set `mqtt.password` and `http.token` shown as `"<redacted>"`.
    ///
    /// # Errors
    /// [`ConfigError::Load`] if serialisation fails (it should not).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        let mut shown = self.clone();
        if !shown.mqtt.password.is_empty() {
            shown.mqtt.password = "<redacted>".into();
        }
        if !shown.http.token.is_empty() {
            shown.http.token = "<redacted>".into();
        }
        toml::to_string_pretty(&shown).map_err(|e| ConfigError::Load(e.to_string()))
    }
}

fn describe(e: config::ConfigError, file: Option<&Path>) -> String {
    let origin = file
        .map(|p| format!(" (layers: default, {}, environment)", p.display()))
        .unwrap_or_default();
    format!("{}{origin}", dotted_keys(&e.to_string()))
}

/// The value written for the key of config-rs's message about a socket
/// address it could not read (`invalid socket address syntax for key
/// `http.listen``), which names the key but not the value: read from the
/// layers (`http.listen`, `mqtt.embedded_listen`). `None` for another
/// message.
fn socket_address_written(message: &str, layered: &serde_json::Value) -> Option<String> {
    let key = message
        .split("invalid socket address syntax for key `")
        .nth(1)?
        .split('`')
        .next()?;
    let value = key.split('.').try_fold(layered, |v, k| v.get(k))?;
    Some(match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// The values an enum key takes (`expected one of `logistic`, `linear`, …`),
/// for config-rs's message about a value it does not take (`enum Family
/// does not have variant constructor logistc for key …`), which names
/// neither: serde's own message, from deserializing the same layers again
/// through serde_json, lists them. `None` when the message is another one,
/// or serde_json stops elsewhere first.
fn expected_variants(message: &str, layered: &serde_json::Value) -> Option<String> {
    let written = message
        .split("does not have variant constructor ")
        .nth(1)?
        .split(" for key `")
        .next()?;
    let serde = serde_json::from_value::<Config>(layered.clone())
        .err()?
        .to_string();
    let expected = serde.strip_prefix(&format!("unknown variant `{written}`, "))?;
    Some(expected.to_string())
}

/// Integers in the configuration are at most this (config-rs reads them as
/// `i64`).
const INTEGER_MAX: i64 = i64::MAX;

/// The first integer key whose layered value was a number with a fraction
/// or beyond `i64`: (key, the value read, its limit when beyond it).
/// config-rs turns such a value into an integer silently (it rounds, and
/// caps at the type's limit), so an environment value beyond `i64`, which
/// it reads as a float (`EDGELOOP__STORE__BATCH_SIZE=99999999999999999999999`),
/// or a float in the file (`batch_size = 1e30`, `2.5`) would run with
/// another number than the one written. `layered` is the layers as read,
/// `typed` the configuration they gave, both as JSON: a float in `layered`
/// where `typed` holds an integer is refused unless it is whole and within
/// `i64` (`100.0` is 100).
fn rounded_integer(
    key: String,
    layered: &serde_json::Value,
    typed: &serde_json::Value,
) -> Option<(String, f64, Option<String>)> {
    use serde_json::Value;
    match (layered, typed) {
        (Value::Object(l), Value::Object(t)) => l.iter().find_map(|(k, v)| {
            let key = if key.is_empty() {
                k.clone()
            } else {
                format!("{key}.{k}")
            };
            rounded_integer(key, v, t.get(k)?)
        }),
        (Value::Array(l), Value::Array(t)) => l
            .iter()
            .zip(t)
            .enumerate()
            .find_map(|(i, (l, t))| rounded_integer(format!("{key}[{i}]"), l, t)),
        (Value::Number(l), Value::Number(t)) if l.is_f64() && !t.is_f64() => {
            let written = l.as_f64()?;
            // 2^63: the first float beyond i64.
            let bound = -(i64::MIN as f64);
            if written >= bound {
                Some((key, written, Some(format!("at most {INTEGER_MAX}"))))
            } else if written < -bound {
                Some((key, written, Some(format!("at least {}", i64::MIN))))
            } else {
                (written.fract() != 0.0).then_some((key, written, None))
            }
        }
        _ => None,
    }
}

/// The first integer of a TOML file beyond `i64`, which config-rs refuses
/// without naming its key: (key, the digits as written). `None` when the
/// file does not parse (config-rs then says why).
fn file_integer_out_of_range(text: &str) -> Option<(String, String)> {
    use toml::de::{DeTable, DeValue};
    fn walk(key: String, value: &DeValue<'_>) -> Option<(String, String)> {
        let child = |k: &str| {
            if key.is_empty() {
                k.to_string()
            } else {
                format!("{key}.{k}")
            }
        };
        match value {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .is_err()
                .then(|| (key.clone(), i.as_str().to_string())),
            DeValue::Table(t) => t
                .iter()
                .find_map(|(k, v)| walk(child(k.get_ref()), v.get_ref())),
            DeValue::Array(a) => a
                .iter()
                .enumerate()
                .find_map(|(n, v)| walk(format!("{key}[{n}]"), v.get_ref())),
            _ => None,
        }
    }
    let table = DeTable::parse(text).ok()?.into_inner();
    table
        .iter()
        .find_map(|(k, v)| walk(k.get_ref().to_string(), v.get_ref()))
}

/// config-rs writes a key below an array element without its dot
/// (`pipelines[0]topics`); the key as a file spells it is
/// `pipelines[0].topics`.
fn dotted_keys(message: &str) -> String {
    let mut out = String::with_capacity(message.len() + 4);
    let mut chars = message.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == ']'
            && chars
                .peek()
                .is_some_and(|n| n.is_ascii_alphabetic() || *n == '_')
        {
            out.push('.');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::load_with_env(Some(&path), env)
    }

    /// A missing key below an array element is named with its dot (config-rs
    /// wrote `pipelines[0]topics`).
    #[test]
    fn a_missing_key_of_a_pipeline_is_named_as_a_file_spells_it() {
        let e = load_str("[[pipelines]]\nname = \"x\"\n", &[]).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("missing configuration field \"pipelines[0].topics\""),
            "{m}"
        );
        assert_eq!(dotted_keys("a[1]b[2]_c[3] d[4]"), "a[1].b[2]._c[3] d[4]");
    }

    /// The log names `http.auth` as the configuration spells it (it
    /// printed the Rust names `Writes` and `All`).
    #[test]
    fn http_auth_is_named_as_written() {
        for (auth, toml) in [(HttpAuth::Writes, "writes"), (HttpAuth::All, "all")] {
            assert_eq!(auth.as_str(), toml);
            let cfg = load_str(&format!("[http]\nauth = \"{toml}\"\n"), &[]).unwrap();
            assert_eq!(cfg.http.auth, auth);
        }
    }

    /// The packaged configuration is the default one with the local
    /// mosquitto as broker, key for key and comment for comment elsewhere.
    #[test]
    fn packaged_configuration_is_the_default_with_the_local_mosquitto() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let packaged = root.join("debian/edgeloop.toml");
        let cfg = Config::load_with_env(Some(&packaged), std::iter::empty()).unwrap();
        assert_eq!(cfg.mqtt.broker, "mqtt://127.0.0.1:1883");
        assert_eq!(
            cfg.mqtt.target().unwrap(),
            BrokerTarget::External {
                host: "127.0.0.1".into(),
                port: 1883,
                tls: false
            }
        );
        // A training holds about 500 bytes per labelled sample of 5
        // features at its peak (BENCHMARKS.md, "Training memory": +125 MB
        // for 242,000): the packaged window keeps that under half the
        // unit's MemoryMax, whatever the store holds (`window = 0` grew with
        // the store, past MemoryMax near a million labelled samples).
        let unit = std::fs::read_to_string(root.join("systemd/edgeloop.service")).unwrap();
        let max_mib: u64 = unit
            .lines()
            .find_map(|l| l.trim().strip_prefix("MemoryMax="))
            .and_then(|v| v.strip_suffix('M'))
            .and_then(|v| v.parse().ok())
            .expect("MemoryMax=…M in the unit");
        let window = cfg.pipelines[0].model.window as u64;
        assert!(
            window > 0 && window * 500 < max_mib * 1024 * 1024 / 2,
            "window {window}, MemoryMax {max_mib}M"
        );
        let mut default = Config::load_with_env(None, std::iter::empty()).unwrap();
        default.mqtt.broker = cfg.mqtt.broker.clone();
        assert_eq!(
            serde_json::to_value(&default).unwrap(),
            serde_json::to_value(&cfg).unwrap()
        );
    }

    /// The packaged unit sets no configuration through the environment:
    /// an `EDGELOOP__…` variable there would win over
    /// /etc/edgeloop/edgeloop.toml without a word (its
    /// `EDGELOOP__STORE__PATH` overrode the file's `store.path`). The store
    /// is `store.path = ""`: `$STATE_DIRECTORY` (`StateDirectory=edgeloop`).
    #[test]
    fn the_packaged_unit_leaves_the_configuration_to_the_file() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let unit = std::fs::read_to_string(root.join("systemd/edgeloop.service")).unwrap();
        let set: Vec<&str> = unit
            .lines()
            .filter(|l| l.trim_start().starts_with("Environment") && l.contains("EDGELOOP__"))
            .collect();
        assert!(set.is_empty(), "{set:?}");
        assert!(unit.lines().any(|l| l.trim() == "StateDirectory=edgeloop"));
        // What systemd sets for StateDirectory=edgeloop (systemd.exec(5)).
        let env = [(
            "STATE_DIRECTORY".to_string(),
            "/var/lib/edgeloop".to_string(),
        )];
        let packaged =
            Config::load_with_env(Some(&root.join("debian/edgeloop.toml")), env).unwrap();
        assert_eq!(
            packaged.store.path,
            Path::new("/var/lib/edgeloop/edgeloop.redb")
        );
    }

    #[test]
    fn an_empty_store_path_is_the_users_state_directory_created_when_checked() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path().to_str().unwrap().to_string();
        let cfg = Config::load_with_env(None, [("HOME".to_string(), h.clone())]).unwrap();
        let want = home.path().join(".local/state/edgeloop/edgeloop.redb");
        assert_eq!(cfg.store.path, want);
        assert!(cfg.store.create_dir);
        assert!(!want.parent().unwrap().exists());
        cfg.check_store_dir().unwrap();
        assert!(want.parent().unwrap().is_dir());
        // A path given by the user is never created.
        let cfg = Config::load_with_env(
            None,
            [
                ("HOME".to_string(), h),
                (
                    "EDGELOOP__STORE__PATH".to_string(),
                    home.path().join("missing/x.redb").display().to_string(),
                ),
            ],
        )
        .unwrap();
        assert!(!cfg.store.create_dir);
        let err = cfg.check_store_dir().unwrap_err().to_string();
        assert!(
            err.contains("store.path") && err.contains("does not exist"),
            "{err}"
        );
    }

    #[test]
    fn default_loads_and_pipeline_defaults_equal_the_documented_example() {
        let cfg = Config::load_with_env(None, std::iter::empty()).unwrap();
        assert_eq!(cfg.mqtt.broker, "embedded");
        let p = &cfg.pipelines[0];
        // Serde defaults must equal the example in config/edgeloop.toml.
        let minimal: PipelineConfig =
            toml::from_str("name='x'\ntopics=['a']\nfeatures=['f']\nlabel='y'\ntimestamp='Date'")
                .unwrap();
        assert_eq!(minimal.device_level, p.device_level);
        assert_eq!(minimal.timestamp_format, p.timestamp_format);
        assert_eq!(minimal.task, p.task);
        assert_eq!(minimal.prediction_topic, p.prediction_topic);
        assert_eq!(minimal.engine, p.engine);
        let (a, b) = (&minimal.model, &p.model);
        assert_eq!(
            (
                a.family,
                a.l2,
                a.max_iter,
                a.min_labels,
                a.retrain_every,
                a.holdout_fraction
            ),
            (
                b.family,
                b.l2,
                b.max_iter,
                b.min_labels,
                b.retrain_every,
                b.holdout_fraction
            )
        );
    }

    /// config-rs read an environment number beyond i64 as a float and
    /// capped it at u64::MAX, and rounded a fractional one: each is now a
    /// config error naming the key.
    #[test]
    fn an_integer_beyond_its_range_or_with_a_fraction_is_refused_naming_the_key() {
        let invalid = |r: Result<Config, ConfigError>| match r {
            Err(ConfigError::Invalid { key, reason }) => (key, reason),
            other => panic!("{other:?}"),
        };
        // A float beyond the key's type: config-rs caps it at u64::MAX, which
        // a 64-bit `usize` holds (then refused here, as written); a 32-bit
        // one (armv7) does not, and config-rs itself refuses it, naming the
        // key.
        let beyond_usize = |r: Result<Config, ConfigError>, want: &str| {
            if cfg!(target_pointer_width = "64") {
                let (key, reason) = invalid(r);
                assert_eq!(key, "store.batch_size");
                assert_eq!(reason, want);
            } else {
                match r {
                    Err(ConfigError::Load(m)) => {
                        assert!(m.contains("key `store.batch_size`"), "{m}")
                    }
                    other => panic!("{other:?}"),
                }
            }
        };
        beyond_usize(
            load_str(
                "",
                &[("EDGELOOP__STORE__BATCH_SIZE", "99999999999999999999999")],
            ),
            "`99999999999999999999999` (environment EDGELOOP__STORE__BATCH_SIZE) is out of \
             range for this integer (at most 9223372036854775807)",
        );
        let (key, reason) = invalid(load_str("", &[("EDGELOOP__STORE__BATCH_SIZE", "2.5")]));
        assert_eq!(key, "store.batch_size");
        assert_eq!(
            reason,
            "`2.5` (environment EDGELOOP__STORE__BATCH_SIZE) is not a whole number"
        );
        // The same in the file.
        beyond_usize(
            load_str("[store]\nbatch_size = 1e30\n", &[]),
            &format!(
                "{} is out of range for this integer (at most 9223372036854775807)",
                1e30
            ),
        );
        let (key, reason) = invalid(load_str("[store]\nbatch_size = 2.5\n", &[]));
        assert_eq!(
            (key.as_str(), reason.as_str()),
            ("store.batch_size", "2.5 is not a whole number")
        );
        // A TOML integer beyond i64, which config-rs refused without the key.
        let (key, reason) = invalid(load_str(
            "[store]\nbatch_size = 99999999999999999999999\n",
            &[],
        ));
        assert_eq!(key, "store.batch_size");
        assert!(
            reason.starts_with("99999999999999999999999 (in "),
            "{reason}"
        );
        assert!(
            reason.ends_with("is out of range for this integer (at most 9223372036854775807)"),
            "{reason}"
        );
        let (key, _) = invalid(load_str(
            "[[pipelines]]\nname='p'\ntopics=['a/+']\nfeatures=['x']\nlabel='y'\n\
             [pipelines.model]\nmin_labels = 0x1ffffffffffffffff\n",
            &[],
        ));
        assert_eq!(key, "pipelines[0].model.min_labels");
        // A whole float within range is its value; integers as before.
        let cfg = load_str("[store]\nbatch_size = 100.0\n", &[]).unwrap();
        assert_eq!(cfg.store.batch_size, 100);
        let cfg = load_str("", &[("EDGELOOP__STORE__BATCH_SIZE", "9")]).unwrap();
        assert_eq!(cfg.store.batch_size, 9);
    }

    #[test]
    fn file_then_environment_override() {
        let cfg = load_str(
            "[http]\nlisten = '127.0.0.1:9001'\n[store]\nbatch_size = 7\n",
            &[
                ("EDGELOOP__STORE__BATCH_SIZE", "9"),
                ("EDGELOOP__MQTT__BROKER", "mqtt://h:1884"),
            ],
        )
        .unwrap();
        assert_eq!(cfg.http.listen.port(), 9001);
        assert_eq!(cfg.store.batch_size, 9);
        assert_eq!(
            cfg.mqtt.target().unwrap(),
            BrokerTarget::External {
                host: "h".into(),
                port: 1884,
                tls: false
            }
        );
        // Untouched keys keep the default.
        assert_eq!(cfg.store.retention_chunk, 1000);
    }

    #[test]
    fn a_client_id_the_embedded_broker_refuses_is_named() {
        let err = load_str("[mqtt]\nclient_id = 'gw/7'\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("mqtt.client_id"), "{err}");
        assert!(load_str(
            "[mqtt]\nbroker = 'mqtt://127.0.0.1:1883'\nclient_id = 'gw/7'\n",
            &[]
        )
        .is_ok());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load_str("[mqtt]\nbrokr = 'embedded'\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("brokr"), "{err}");
    }

    /// A value an enum key does not take lists the ones it does: config-rs
    /// said only `enum Family does not have variant constructor logistc`.
    #[test]
    fn an_unknown_enum_value_lists_the_values_the_key_takes() {
        let pipeline = "[[pipelines]]\nname='p'\ntopics=['a/+/b']\nfeatures=['f']\nlabel='y'\n";
        let err = load_str(
            &format!("{pipeline}[pipelines.model]\nfamily='logistc'\n"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("pipelines[0].model.family"), "{err}");
        assert!(
            err.contains("expected one of `logistic`, `linear`, `ridge`, `mlp`, `tree`, `forest`, `svm`, `auto`"),
            "{err}"
        );
        let err = load_str(&format!("{pipeline}task='regresion'\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("pipelines[0].task"), "{err}");
        assert!(
            err.contains("expected `classification` or `regression`"),
            "{err}"
        );
        // Another error is left as config-rs words it.
        let err = load_str("", &[("EDGELOOP__STORE__BATCH_SIZE", "lots")])
            .unwrap_err()
            .to_string();
        assert!(!err.contains("expected one of"), "{err}");
    }

    /// A socket address that does not parse is named with its key and the
    /// value written, from the file or the environment (config-rs named
    /// only the key).
    #[test]
    fn a_bad_listen_address_names_the_key_and_the_value() {
        for written in [
            "localhost:99999",
            "nonsense",
            "127.0.0.1:99999",
            "localhost:8080",
        ] {
            let err = load_str(&format!("[http]\nlisten = '{written}'\n"), &[])
                .unwrap_err()
                .to_string();
            assert!(err.contains("key `http.listen`"), "{err}");
            assert!(
                err.contains(&format!("`{written}` is not an IP address and port")),
                "{err}"
            );
            let err = load_str("", &[("EDGELOOP__MQTT__EMBEDDED_LISTEN", written)])
                .unwrap_err()
                .to_string();
            assert!(err.contains("key `mqtt.embedded_listen`"), "{err}");
            assert!(err.contains(&format!("`{written}` is not")), "{err}");
        }
        // A number (TOML integer) is shown as written too.
        let err = load_str("[http]\nlisten = 8080\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("http.listen"), "{err}");
    }

    /// Two pipelines of `topics`, and what loading them logged.
    fn load_pipelines(topics: [&str; 2]) -> (Result<Config, ConfigError>, String) {
        #[derive(Clone, Default)]
        struct Logged(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Logged {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let logged = Logged::default();
        let writer = logged.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let toml = format!(
            "[[pipelines]]\nname='all'\ntopics=['{}']\nlabel_topics=[]\nfeatures=['f']\nlabel='y'\n\
             [[pipelines]]\nname='temp'\ntopics=['{}']\nlabel_topics=[]\nfeatures=['f']\nlabel='y'\n",
            topics[0], topics[1]
        );
        let cfg = tracing::subscriber::with_default(subscriber, || load_str(&toml, &[]));
        let text = String::from_utf8(logged.0.lock().unwrap().clone()).unwrap();
        (cfg, text)
    }

    /// Two pipelines whose filters overlap each store a message matching
    /// both (the writer routes it to every matching pipeline): loading warns
    /// once, naming both pipelines and filters. The daemon subscribes to
    /// the covering filter alone (`mqtt_config::subscriptions`), so the
    /// broker sends the message once.
    #[test]
    fn overlapping_filters_of_two_pipelines_warn_once_naming_both() {
        let (cfg, logged) = load_pipelines(["sensors/#", "sensors/+/temp"]);
        let cfg = cfg.unwrap();
        assert_eq!(
            cfg.overlapping_pipelines(),
            [[("all", "sensors/#"), ("temp", "sensors/+/temp")]]
        );
        let warnings: Vec<&str> = logged.lines().filter(|l| l.contains("WARN")).collect();
        assert_eq!(warnings.len(), 1, "{logged}");
        for part in [
            "first=\"all\"",
            "first_filter=\"sensors/#\"",
            "second=\"temp\"",
            "second_filter=\"sensors/+/temp\"",
            "Topic filters of two pipelines overlap",
        ] {
            assert!(warnings[0].contains(part), "{part}: {logged}");
        }
        // Disjoint filters: no warning.
        let (cfg, logged) = load_pipelines(["sensors/+/hum", "sensors/+/temp"]);
        assert!(cfg.unwrap().overlapping_pipelines().is_empty());
        assert!(!logged.contains("WARN"), "{logged}");
    }

    /// Filters of two pipelines that overlap with neither covering the
    /// other load (they were refused, and a configuration that loaded
    /// before stopped the daemon after an upgrade): the ingest connection
    /// subscribes to their covering filter alone, and loading logs it once.
    #[test]
    fn partly_overlapping_filters_load_and_are_subscribed_as_their_covering_filter() {
        let (cfg, logged) = load_pipelines(["sensors/a/#", "sensors/+/temp"]);
        let cfg = cfg.unwrap();
        let subs = cfg.subscriptions();
        assert_eq!(subs.len(), 1, "{subs:?}");
        assert_eq!(subs[0].filter, "sensors/+/#");
        assert_eq!(subs[0].covers, ["sensors/a/#", "sensors/+/temp"]);
        let warnings: Vec<&str> = logged.lines().filter(|l| l.contains("WARN")).collect();
        assert_eq!(warnings.len(), 2, "{logged}");
        for part in [
            "subscription=sensors/+/#",
            "filters=[\"sensors/a/#\", \"sensors/+/temp\"]",
            "subscribed as one covering filter",
            "counted as unrouted, not stored",
        ] {
            assert!(warnings[1].contains(part), "{part}: {logged}");
        }
        // What the daemon subscribes to (`daemon::start` passes the same
        // filters).
        let filters: Vec<String> = cfg
            .pipelines
            .iter()
            .flat_map(|p| p.topics.iter().chain(&p.label_topics).cloned())
            .collect();
        assert_eq!(
            crate::ingest::mqtt_config::subscriptions(&filters),
            ["sensors/+/#"]
        );
        // A covering filter that matches the daemon's own predictions
        // (`edgeloop/{pipeline}/predictions/{device}`) says so.
        let (cfg, logged) = load_pipelines(["+/x/#", "sensors/#"]);
        assert_eq!(cfg.unwrap().subscriptions()[0].filter, "+/#");
        for pipeline in ["all", "temp"] {
            assert!(
                logged
                    .lines()
                    .any(|l| l.contains("matches the pipeline's prediction topic")
                        && l.contains(&format!("pipeline={pipeline}"))),
                "{pipeline}: {logged}"
            );
        }
        assert!(!warnings.iter().any(|l| l.contains("prediction topic")));
        // One covering another: that one, no covering filter to log.
        let (cfg, logged) = load_pipelines(["sensors/#", "sensors/+/temp"]);
        assert_eq!(cfg.unwrap().subscriptions()[0].filter, "sensors/#");
        assert!(!logged.contains("covering filter"), "{logged}");
    }

    /// Shared subscriptions of one group are joined in the group; a plain
    /// filter and a shared one, or two groups, that overlap are refused
    /// naming both, their kinds, and the covering filter when a joined one
    /// makes the overlap.
    #[test]
    fn overlapping_filters_of_different_kinds_are_refused_naming_both() {
        let load = |topics: [&str; 3]| {
            load_str(
                &format!(
                    "[mqtt]\nbroker='mqtt://127.0.0.1:1883'\n\
                     [[pipelines]]\nname='a'\ntopics=['{}', '{}']\nlabel_topics=[]\nfeatures=['f']\nlabel='y'\n\
                     [[pipelines]]\nname='b'\ntopics=['{}']\nlabel_topics=[]\nfeatures=['f']\nlabel='y'\n",
                    topics[0], topics[1], topics[2]
                ),
                &[],
            )
        };
        let cfg = load(["$share/g/sensors/a/#", "other/x", "$share/g/sensors/+/temp"]).unwrap();
        let subs: Vec<String> = cfg.subscriptions().into_iter().map(|s| s.filter).collect();
        assert_eq!(subs, ["$share/g/sensors/+/#", "other/x"]);
        let err = load(["sensors/a/#", "other/x", "$share/g/sensors/+/temp"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("pipelines[1].topics"), "{err}");
        assert!(
            err.contains(
                "`$share/g/sensors/+/temp` (pipelines[1].topics, pipeline `b`, shared in group \
                 `g`) overlaps `sensors/a/#` (pipelines[0].topics, pipeline `a`, plain)"
            ),
            "{err}"
        );
        assert!(
            err.contains("no one subscription can be both shared in group `g` and plain"),
            "{err}"
        );
        let err = load(["$share/h/sensors/#", "other/x", "$share/g/sensors/+/temp"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("both shared in group `g` and shared in group `h`"),
            "{err}"
        );
        // Neither configured filter of `a` overlaps `sensors/b/hum`; their
        // covering filter `sensors/+/#` does.
        let err = load(["sensors/a/#", "sensors/+/temp", "$share/g/sensors/b/hum"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "`$share/g/sensors/b/hum` (pipelines[1].topics, pipeline `b`, shared in group \
                 `g`) overlaps `sensors/+/#` (plain, the covering filter subscribed for \
                 `sensors/a/#`, `sensors/+/temp`, which overlap partly)"
            ),
            "{err}"
        );
    }

    /// A topic filter with a wildcard in the wrong place says which level
    /// and where the wildcard goes (MQTT 3.1.1 §4.7.1), for the sample and
    /// the label topics and inside a shared subscription.
    #[test]
    fn a_misplaced_wildcard_is_named_with_its_level() {
        let refused = |topics: &str, label_topics: &str| {
            load_str(
                &format!(
                    "[[pipelines]]\nname='p'\ntopics=['{topics}']\nlabel_topics=['{label_topics}']\nfeatures=['f']\nlabel='y'\n"
                ),
                &[],
            )
            .unwrap_err()
            .to_string()
        };
        let err = refused("sensors/room+/occupancy", "l/+/o");
        assert!(err.contains("pipelines[0].topics"), "{err}");
        assert!(
            err.contains("level 2 `room+`: `+` must be a whole level"),
            "{err}"
        );
        let err = refused("sensors/#/occupancy", "l/+/o");
        assert!(
            err.contains("level 2 `#`: `#` must be a whole level and the last one"),
            "{err}"
        );
        let err = refused("sensors/+/occupancy", "labels#");
        assert!(err.contains("pipelines[0].label_topics"), "{err}");
        assert!(err.contains("level 1 `labels#`"), "{err}");
        let err = refused("", "l/+/o");
        assert!(err.contains("an empty filter matches no topic"), "{err}");
        let err = load_str(
            "[mqtt]\nbroker='mqtt://127.0.0.1:1883'\n[[pipelines]]\nname='p'\ntopics=['$share/g/s/#/x']\nfeatures=['f']\nlabel='y'\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("the shared subscription's filter `s/#/x`: level 2 `#`"),
            "{err}"
        );
    }

    /// A label listed among the features (a newcomer copying a CSV's
    /// header) is refused: the models scored 1.0 on the answer itself.
    #[test]
    fn the_label_among_the_features_is_refused() {
        let err = load_str(
            "[[pipelines]]\nname='p'\ntopics=['a/+/b']\nfeatures=['f', 'y']\nlabel='y'\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("pipelines[0].features"), "{err}");
        assert!(err.contains("`y` is the label"), "{err}");
    }

    #[test]
    fn invalid_values_are_named() {
        let err = load_str("[mqtt]\nbroker = 'http://x'\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("mqtt.broker"), "{err}");
        let err = load_str(
            "[[pipelines]]\nname='p'\ntopics=['a/#']\nfeatures=['f']\nlabel='y'\n[pipelines.model]\nl2=-1.0\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("pipelines[0].model.l2"), "{err}");
        let err = load_str(
            "[[pipelines]]\nname='p'\ntopics=['a/#/b']\nfeatures=['f']\nlabel='y'\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("pipelines[0].topics"), "{err}");
        let err = load_str(
            "[[pipelines]]\nname='p'\ntopics=['a/b']\nfeatures=['f']\nlabel='y'\ndevice_level=2\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("pipelines[0].device_level"), "{err}");
        let err = load_str(
            "[[pipelines]]\nname='p'\ntopics=['out/#']\nfeatures=['f']\nlabel='y'\nprediction_topic='out/x'\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("predictions would be ingested"), "{err}");
        let err = load_str("", &[("EDGELOOP__STORE__BATCH_SIZE", "lots")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("batch_size"), "{err}");
    }

    #[test]
    fn bad_family_hyperparameters_are_refused_naming_the_key() {
        let pipeline = "[[pipelines]]\nname='p'\ntopics=['a/#']\nfeatures=['f']\nlabel='y'\n";
        for (section, expected) in [
            (
                "[pipelines.model.forest]\nn_trees = 0\n",
                "config key `pipelines[0].model.forest.n_trees`: 0 must be at least 1",
            ),
            (
                "[pipelines.model.tree]\nmax_depth = -1\n",
                "config key `pipelines[0].model.tree.max_depth`",
            ),
            (
                "[pipelines.model.mlp]\nhidden_layers = []\n",
                "config key `pipelines[0].model.mlp.hidden_layers`: must not be empty",
            ),
            (
                "[pipelines.model.mlp]\nhidden_layers = [8, 0]\n",
                "config key `pipelines[0].model.mlp.hidden_layers[1]`",
            ),
            (
                "[pipelines.model.svm]\nc = -1.0\n",
                "config key `pipelines[0].model.svm.c`: -1 must be positive",
            ),
            (
                "[pipelines.model]\nfamily = 'ridge'\n",
                "config key `pipelines[0].model.family`: `ridge` cannot learn classification",
            ),
            (
                "[pipelines.model]\nfamily = 'auto'\ncandidates = ['auto']\n",
                "config key `pipelines[0].model.candidates`",
            ),
            (
                "[pipelines.model]\nmetric = 'r2'\n",
                "config key `pipelines[0].model.metric`: `r2` does not score classification",
            ),
            (
                "[pipelines.model]\nevaluation = 'kfold'\nfolds = 1\n",
                "config key `pipelines[0].model.folds`: 1 must be at least 2",
            ),
            (
                "[pipelines.model.augment]\ncopies = 2\njitter = -0.1\n",
                "config key `pipelines[0].model.augment.jitter`: -0.1 must be",
            ),
            (
                "[pipelines.model.augment]\ncopies = 50\nscaling = 0.1\n",
                "config key `pipelines[0].model.augment.copies`: 50 is more than the limit of 20",
            ),
            (
                "[pipelines.model.augment]\ncopies = 1\ntime_shift = 2\nwindows = [['f', 'g']]\n",
                "config key `pipelines[0].model.augment.windows[0]`: `g` is not one of the pipeline's features",
            ),
            (
                "[pipelines.model.balance]\nstrategy = 'oversample'\nratio = 0.0\n",
                "config key `pipelines[0].model.balance.ratio`: 0 must be in (0, 1]",
            ),
            (
                "[pipelines.windows]\nenabled = true\nsize = 4\nstep = 5\n",
                "config key `pipelines[0].windows.step`: 5 must be in 1..=size (4)",
            ),
            (
                "[pipelines.windows]\nenabled = true\nstats = ['rms', 'rms']\n",
                "config key `pipelines[0].windows.stats`: `rms` is listed twice",
            ),
            (
                "[pipelines.model]\nwindow = 100\nreservoir_in_training = false\n\
                 [pipelines.windows]\nenabled = true\n",
                "config key `pipelines[0].model.reservoir_in_training`: a windowed pipeline",
            ),
            (
                "[pipelines.windows]\nenabled = true\n[pipelines.model.augment]\ncopies = 1\n\
                 time_shift = 2\nwindows = [['f_mean', 'f_max'], ['f', 'g']]\n",
                "config key `pipelines[0].model.augment.windows[1]`: `f` is not one of",
            ),
            (
                "[pipelines.model]\nwindow = 0\nreservoir_in_training = false\n",
                "config key `pipelines[0].model.reservoir_in_training`: false needs window > 0",
            ),
        ] {
            let err = load_str(&format!("{pipeline}{section}"), &[])
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(expected), "{section}: {err}");
        }
        let err = load_str(
            "[[pipelines]]\nname='p'\ntopics=['a/#']\nfeatures=['f', 'mode']\nlabel='y'\n\
             [pipelines.preprocess]\ncategorical = ['mode']\n[pipelines.windows]\nenabled = true\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(
                "config key `pipelines[0].preprocess.categorical`: window statistics are numeric"
            ),
            "{err}"
        );
        let err = load_str(
            &format!("{pipeline}[pipelines.model]\nfamily = 'boosting'\n"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("boosting"), "{err}");
        let err = load_str(
            &format!("{pipeline}[pipelines.model.balance]\nstrategy = 'smote'\n"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("smote"), "{err}");
        let err = load_str(
            &format!("{pipeline}[pipelines.model.augment]\ncopies = 1\njiter = 0.1\n"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("jiter"), "{err}");
        // Every family name parses.
        for family in ["logistic", "mlp", "tree", "forest", "svm", "auto"] {
            let toml = format!("{pipeline}[pipelines.model]\nfamily = '{family}'\n");
            let cfg = load_str(&toml, &[]).unwrap();
            assert_eq!(cfg.pipelines[0].model.family.name(), family);
        }
    }

    #[test]
    fn regression_pipelines_load_and_refuse_classes_and_ddm_by_key() {
        let base = "[[pipelines]]\nname='air'\ntopics=['sensors/+/air']\nfeatures=['T', 'RH']\n\
                    label='CO_GT'\ntask='regression'\n";
        let cfg = load_str(&format!("{base}[pipelines.model]\nfamily='ridge'\n"), &[]).unwrap();
        assert_eq!(cfg.pipelines[0].task, Task::Regression);
        assert!(cfg.pipelines[0].classes.is_empty());
        let cfg = load_str(
            &format!("{base}[pipelines.model]\nfamily='forest'\n[pipelines.drift]\ndetector='page_hinkley'\n"),
            &[],
        )
        .unwrap();
        assert_eq!(cfg.pipelines[0].model.family, Family::Forest);
        let refused = |extra: &str| {
            load_str(&format!("{base}{extra}"), &[])
                .unwrap_err()
                .to_string()
        };
        let err = refused("classes=['1', '2']\n[pipelines.model]\nfamily='ridge'\n");
        assert!(err.contains("pipelines[0].classes"), "{err}");
        let err = refused("[pipelines.model]\nfamily='ridge'\n[pipelines.drift]\ndetector='ddm'\n");
        assert!(err.contains("pipelines[0].drift.detector"), "{err}");
        // The default family, logistic, cannot learn a regression.
        let err = refused("");
        assert!(err.contains("pipelines[0].model.family"), "{err}");
        let err = refused("[pipelines.model]\nfamily='ridge'\nmetric='accuracy'\n");
        assert!(err.contains("pipelines[0].model.metric"), "{err}");
        // A regression pipeline needs its label field, as a classification one does.
        let err = load_str(
            "[[pipelines]]\nname='air'\ntopics=['a/+/b']\nfeatures=['T']\ntask='regression'\n\
             [pipelines.model]\nfamily='ridge'\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("pipelines[0].label"), "{err}");
    }

    #[test]
    fn engine_and_onnxruntime_keys_load_and_are_checked() {
        use crate::onnx::engine::EngineKind;
        let base = "[[pipelines]]\nname='occ'\ntopics=['s/+/o']\nfeatures=['T']\nlabel='y'\n";
        let cfg = load_str(base, &[]).unwrap();
        assert_eq!(cfg.pipelines[0].engine, EngineKind::Tract);
        assert_eq!(cfg.engine_of(0).1.ort_library, None);
        let cfg = load_str(
            &format!("[onnxruntime]\nlibrary='/opt/ort/libonnxruntime.so'\n{base}engine='auto'\n"),
            &[],
        )
        .unwrap();
        let (kind, options) = cfg.engine_of(0);
        assert_eq!(kind, EngineKind::Auto);
        assert_eq!(
            options.ort_library,
            Some(std::path::PathBuf::from("/opt/ort/libonnxruntime.so"))
        );
        let err = load_str(&format!("{base}engine='onnx'\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("onnx"), "{err}");
        let err = load_str("[onnxruntime]\npath='x'\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("path"), "{err}");
        let ort = load_str(&format!("{base}engine='ort'\n"), &[]);
        if crate::onnx::engine::ORT_COMPILED {
            assert_eq!(ort.unwrap().pipelines[0].engine, EngineKind::Ort);
        } else {
            let err = ort.unwrap_err().to_string();
            assert!(
                err.contains("pipelines[0].engine") && err.contains("feature `ort`"),
                "{err}"
            );
        }
    }

    #[test]
    fn mqtts_broker_and_its_keys_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let key = |k: &str, t: &str| match load_str(t, &[]).unwrap_err() {
            ConfigError::Invalid { key, reason } => {
                assert_eq!(key, k, "{reason}");
                reason
            }
            e => panic!("{e}"),
        };
        // mqtts:// without a CA file, and with one that does not exist.
        key("mqtt.tls_ca_file", "[mqtt]\nbroker = 'mqtts://h'\n");
        let reason = key(
            "mqtt.tls_ca_file",
            &format!(
                "[mqtt]\nbroker = 'mqtts://h'\ntls_ca_file = '{}'\n",
                ca.display()
            ),
        );
        assert!(
            reason.contains(&format!("cannot read {}", ca.display())),
            "{reason}"
        );
        // A file without a certificate in it.
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let reason = key(
            "mqtt.tls_ca_file",
            &format!(
                "[mqtt]\nbroker = 'mqtts://h'\ntls_ca_file = '{}'\n",
                ca.display()
            ),
        );
        assert!(reason.contains("holds no PEM CERTIFICATE"), "{reason}");
        // TLS files need an mqtts:// broker; a certificate needs its key.
        key(
            "mqtt.tls_ca_file",
            "[mqtt]\nbroker = 'mqtt://h'\ntls_ca_file = '/etc/hostname'\n",
        );
        key(
            "mqtt.tls_key_file",
            "[mqtt]\nbroker = 'mqtts://h'\ntls_ca_file = '/x'\ntls_cert_file = '/c'\n",
        );
        key(
            "mqtt.username",
            "[mqtt]\nbroker = 'mqtt://h'\npassword = 'p'\n",
        );
        key("mqtt.username", "[mqtt]\nusername = 'u'\n");
        key("mqtt.broker", "[mqtt]\nbroker = 'mqtts://h:0'\n");
        // Username and password without TLS are fine; mqtts defaults to 8883.
        let cfg = load_str(
            "[mqtt]\nbroker = 'mqtt://h'\nusername = 'u'\npassword = 'p'\n",
            &[],
        )
        .unwrap();
        assert_eq!(cfg.mqtt.username, "u");
        // check-config does not print the password.
        let shown = cfg.to_toml().unwrap();
        assert!(shown.contains("password = \"<redacted>\""), "{shown}");
        assert!(!shown.contains("password = \"p\""), "{shown}");
        let mut m = cfg.mqtt;
        m.broker = "mqtts://broker.lan".into();
        assert_eq!(
            m.target().unwrap(),
            BrokerTarget::External {
                host: "broker.lan".into(),
                port: 8883,
                tls: true
            }
        );
        m.broker = "mqtts://[::1]:18883/".into();
        assert_eq!(
            m.target().unwrap(),
            BrokerTarget::External {
                host: "::1".into(),
                port: 18883,
                tls: true
            }
        );
    }

    #[test]
    fn mqtt_urls() {
        assert_eq!(
            parse_mqtt_url("mqtt://127.0.0.1:1999").unwrap(),
            ("127.0.0.1".into(), 1999)
        );
        assert_eq!(
            parse_mqtt_url("mqtt://broker").unwrap(),
            ("broker".into(), 1883)
        );
        assert!(parse_mqtt_url("mqtt://:12").is_err());
        assert!(parse_mqtt_url("mqtt://h:99999").is_err());
    }

    /// `tcp://` and `ssl://` are Paho's names of `mqtt://` and `mqtts://`
    /// (rumqttc's `MqttOptions::parse_url` takes all four): taken as them.
    /// Any other scheme is refused, naming the key, the URL and the schemes
    /// taken.
    #[test]
    fn broker_url_schemes_tcp_and_ssl_are_aliases_and_others_are_listed() {
        let target = |broker: &str| {
            let mut m = Config::load_with_env(None, std::iter::empty())
                .unwrap()
                .mqtt;
            m.broker = broker.into();
            m.target()
        };
        let plain = |host: &str, port| BrokerTarget::External {
            host: host.into(),
            port,
            tls: false,
        };
        assert_eq!(
            target("tcp://broker.lan").unwrap(),
            plain("broker.lan", 1883)
        );
        assert_eq!(
            target("tcp://10.0.0.2:1884").unwrap(),
            target("mqtt://10.0.0.2:1884").unwrap()
        );
        assert_eq!(
            target("ssl://broker.lan").unwrap(),
            BrokerTarget::External {
                host: "broker.lan".into(),
                port: 8883,
                tls: true
            }
        );
        for bad in [
            "http://broker",
            "ws://broker:8000",
            "broker:1883",
            "mqtt:/broker",
        ] {
            let err = target(bad).unwrap_err().to_string();
            assert!(err.contains("mqtt.broker"), "{err}");
            assert!(
                err.contains(&format!(
                    "`{bad}` is neither \"embedded\" nor a broker URL: mqtt://host[:port] or \
                     tcp://host[:port] (plain, port 1883), mqtts://host[:port] or \
                     ssl://host[:port] (TLS, port 8883)"
                )),
                "{err}"
            );
        }
        // ssl:// is TLS: it needs the CA file, as mqtts:// does.
        let err = load_str("[mqtt]\nbroker = 'ssl://h'\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("mqtt.tls_ca_file"), "{err}");
    }
}
