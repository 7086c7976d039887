//! `edgeloop models import|list|promote|rollback|history` (model versions of
//! a running daemon, over its HTTP API) and `edgeloop predict` (any ONNX
//! model on a CSV file).

use std::path::PathBuf;

use clap::Subcommand;

/// `edgeloop models`.
#[derive(clap::Args)]
pub struct ModelsArgs {
    #[command(subcommand)]
    action: ModelsAction,
    /// The daemon's configuration file: the API's address, token and HTTPS.
    ///
    /// `http.listen`, `http.token_file` (or EDGELOOP__HTTP__TOKEN) and
    /// `http.tls_*`. Without it: the defaults and the environment.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Base URL of the daemon's HTTP API: http://IP:PORT or https://IP:PORT.
    ///
    /// Default: from the configuration.
    #[arg(long, global = true)]
    url: Option<String>,
    /// PEM file of the CA that signed an HTTPS daemon's certificate.
    ///
    /// Default: `http.tls_cert_file` of the configuration, for a
    /// self-signed certificate.
    #[arg(long, global = true)]
    ca_file: Option<PathBuf>,
    /// Print the daemon's JSON answer.
    #[arg(long, global = true)]
    json: bool,
    /// Print every version and cell whole (default: tables within 100 columns).
    #[arg(long, global = true)]
    wide: bool,
}

#[derive(Subcommand)]
enum ModelsAction {
    /// Upload an ONNX model: stored as a new version, served once promoted.
    ///
    /// Checked first: size, SHA-256, operators, input width and feature
    /// order, a probe run.
    Import {
        /// The pipeline, as named in the daemon's configuration.
        #[arg(long)]
        pipeline: String,
        /// The ONNX model to upload.
        #[arg(long)]
        file: PathBuf,
    },
    /// Every version's model card, side by side.
    List {
        /// The pipeline, as named in the daemon's configuration.
        #[arg(long)]
        pipeline: String,
    },
    /// Serve a stored version.
    Promote {
        /// The pipeline, as named in the daemon's configuration.
        #[arg(long)]
        pipeline: String,
        /// The stored version to serve.
        #[arg(long)]
        version: u32,
    },
    /// Serve the version that served before the current one.
    Rollback {
        /// The pipeline, as named in the daemon's configuration.
        #[arg(long)]
        pipeline: String,
    },
    /// The timeline of versions and decisions.
    History {
        /// The pipeline, as named in the daemon's configuration.
        #[arg(long)]
        pipeline: String,
    },
}

/// Where and how the CLI reaches a running daemon's HTTP API.
pub struct DaemonApi {
    addr: std::net::SocketAddr,
    /// TLS client configuration and the name to check, for HTTPS.
    tls: Option<(std::sync::Arc<rustls::ClientConfig>, String)>,
    token: Option<String>,
    /// Where `addr` came from, for a daemon that does not answer there:
    /// `--url`, or `http.listen` of which configuration.
    from: String,
}

impl DaemonApi {
    /// From the daemon's configuration (`file`, the defaults and the
    /// environment), `url` and `ca_file` overriding it. A listener on
    /// `0.0.0.0` (or `::`) is reached on loopback.
    ///
    /// # Errors
    /// The configuration cannot be read, the URL is not
    /// `http(s)://IP:PORT`, the token file is unreadable, or the CA file
    /// cannot be used.
    pub fn from_config(
        file: Option<&std::path::Path>,
        url: Option<&str>,
        ca_file: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        let cfg = crate::config::Config::load(file)?;
        let token = cfg.http.bearer_token()?;
        let from = match (url, file) {
            (Some(_), _) => "--url".to_string(),
            (None, Some(f)) => format!("`http.listen` of {}", f.display()),
            (None, None) => "`http.listen` of the default configuration, no --config given".into(),
        };
        let (https, addr) = match url {
            Some(url) => {
                let (https, rest) = match url.strip_prefix("https://") {
                    Some(rest) => (true, rest),
                    None => (false, url.strip_prefix("http://").unwrap_or(url)),
                };
                let addr = rest.trim_end_matches('/').parse().map_err(|_| {
                    anyhow::anyhow!("--url `{url}`: expected http://IP:PORT or https://IP:PORT")
                })?;
                (https, addr)
            }
            None => {
                let mut addr = cfg.http.listen;
                if addr.ip().is_unspecified() {
                    addr.set_ip(if addr.is_ipv4() {
                        std::net::Ipv4Addr::LOCALHOST.into()
                    } else {
                        std::net::Ipv6Addr::LOCALHOST.into()
                    });
                }
                (cfg.http.tls(), addr)
            }
        };
        let tls = if https {
            let ca = ca_file
                .map(std::path::Path::to_path_buf)
                .unwrap_or_else(|| cfg.http.tls_cert_file.clone());
            anyhow::ensure!(
                !ca.as_os_str().is_empty(),
                "an HTTPS daemon: give --ca-file (the CA that signed its certificate)"
            );
            let pem = std::fs::read(&ca).map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))?;
            let mut roots = rustls::RootCertStore::empty();
            use rustls::pki_types::pem::PemObject;
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
                roots
                    .add(cert.map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))?)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))?;
            }
            let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Some((std::sync::Arc::new(config), addr.ip().to_string()))
        } else {
            None
        };
        Ok(Self {
            addr,
            tls,
            token,
            from,
        })
    }

    /// A connection that sends the token with every request.
    ///
    /// # Errors
    /// The daemon cannot be reached (named with where its address came
    /// from: a daemon started with `--config my.toml` listens where that
    /// file says, which the CLI knows only when given the same file), or
    /// TLS fails.
    pub async fn connect(&self) -> anyhow::Result<crate::demo::HttpClient> {
        let client = match &self.tls {
            None => crate::demo::HttpClient::connect(self.addr).await,
            Some((tls, name)) => {
                crate::demo::HttpClient::connect_tls(self.addr, name, tls.clone()).await
            }
        }
        .map_err(|e| match e.starts_with("connect ") {
            // Nothing listens there (refused, unreachable, timed out).
            true => anyhow::anyhow!(
                "{e}: no edgeloop daemon answers at {} ({}); give the daemon's --config, \
                 or --url http://IP:PORT",
                self.addr,
                self.from
            ),
            false => anyhow::Error::msg(e),
        })?;
        Ok(client.with_token(self.token.clone()))
    }
}

/// `edgeloop predict`.
#[derive(clap::Args)]
pub struct PredictArgs {
    /// The ONNX model.
    #[arg(long)]
    model: PathBuf,
    /// CSV file with a header row.
    #[arg(long)]
    file: PathBuf,
    /// Inference engine: tract, ort (feature `ort`) or auto.
    ///
    /// auto: tract, then onnxruntime when tract refuses the model.
    #[arg(long, default_value = "auto")]
    engine: crate::onnx::engine::EngineKind,
    /// libonnxruntime shared library (default: ORT_DYLIB_PATH).
    #[arg(long)]
    ort_library: Option<PathBuf>,
    /// Features per row of an input whose width the model leaves out.
    #[arg(long)]
    input_width: Option<usize>,
    /// Shape of one row for an input of rank 3 or more, e.g. 1,64 for [N, 1, 64].
    #[arg(long, value_delimiter = ',')]
    input_shape: Vec<usize>,
    /// Print `{"engine", "rows": [{output: value}]}`.
    #[arg(long)]
    json: bool,
    /// Print the table's lines whole (default: cut at 100 columns).
    #[arg(long)]
    wide: bool,
}

/// Sends the action's request to the daemon and prints its answer (the
/// table, or the JSON with `--json`); an HTTP error status is an error.
pub fn run(args: ModelsArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let ModelsArgs {
        action,
        config,
        url,
        ca_file,
        json,
        wide,
    } = args;
    let daemon = DaemonApi::from_config(config.as_deref(), url.as_deref(), ca_file.as_deref())?;
    let mut body = None;
    let (method, path) = match &action {
        ModelsAction::Import { pipeline, file } => {
            let bytes =
                std::fs::read(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let sha = crate::serve::intake::sha256_hex(&bytes);
            body = Some(bytes);
            (
                "PUT",
                format!("/v1/pipelines/{pipeline}/models?sha256={sha}"),
            )
        }
        ModelsAction::List { pipeline } => ("GET", format!("/v1/pipelines/{pipeline}/models")),
        ModelsAction::Promote { pipeline, version } => (
            "POST",
            format!("/v1/pipelines/{pipeline}/models/{version}/promote"),
        ),
        ModelsAction::Rollback { pipeline } => {
            ("POST", format!("/v1/pipelines/{pipeline}/rollback"))
        }
        ModelsAction::History { pipeline } => ("GET", format!("/v1/pipelines/{pipeline}/history")),
    };
    let (status, body) = runtime.block_on(async {
        let mut client = daemon.connect().await?;
        client
            .request(method, &path, body)
            .await
            .map_err(anyhow::Error::msg)
    })?;
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    anyhow::ensure!(
        status < 400,
        "{status}: {}",
        value["error"]
            .as_str()
            .unwrap_or(&String::from_utf8_lossy(&body))
    );
    if json {
        outln!("{}", serde_json::to_string_pretty(&value)?)?;
    } else {
        out!("{}", super::render::models_answer(&value, wide))?;
    }
    Ok(())
}

/// Runs the model on the file's rows and prints every output per row.
pub fn predict(args: PredictArgs) -> anyhow::Result<()> {
    let PredictArgs {
        model,
        file,
        engine,
        ort_library,
        input_width,
        input_shape,
        json,
        wide,
    } = args;
    let options = crate::onnx::engine::LoadOptions {
        input_width,
        ort_library,
    };
    let shape = (!input_shape.is_empty()).then_some(input_shape.as_slice());
    let out = crate::serve::predict_file::predict_file(&model, &file, engine, &options, shape)?;
    if json {
        outln!("{}", out.to_json())?;
    } else {
        errln!("engine: {}", out.engine);
        out!("{}", super::render::fit(&out.table(), wide))?;
    }
    Ok(())
}
