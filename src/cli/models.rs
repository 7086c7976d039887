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
    /// Base URL of the daemon's HTTP API.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8080")]
    url: String,
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
        url,
        json,
        wide,
    } = args;
    let addr: std::net::SocketAddr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .map_err(|_| anyhow::anyhow!("--url `{url}`: expected http://IP:PORT"))?;
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
        let mut client = crate::demo::HttpClient::connect(addr)
            .await
            .map_err(anyhow::Error::msg)?;
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
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{}", super::render::models_answer(&value, wide));
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
        println!("{}", out.to_json());
    } else {
        eprintln!("engine: {}", out.engine);
        print!("{}", super::render::fit(&out.table(), wide));
    }
    Ok(())
}
