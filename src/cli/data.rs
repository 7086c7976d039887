//! `edgeloop replay` (a CSV file's rows published over MQTT) and
//! `edgeloop demo` (the whole loop on the UCI Occupancy data).

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use crate::config::parse_mqtt_url;
use crate::ingest::replay::{self, ReplayOptions};

use super::daemon::cancel_on_signal;

/// `edgeloop replay`.
#[derive(clap::Args)]
pub struct ReplayArgs {
    /// CSV file with a header row; one message per row, the columns as fields.
    #[arg(long)]
    file: PathBuf,
    /// MQTT topic to publish to, e.g. sensors/room1/occupancy.
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
    /// Give up after this many seconds without an answer from the broker.
    ///
    /// An answer: the connection's CONNACK, a message's PUBACK. The replay
    /// then fails, naming the broker and what it did not get.
    #[arg(long, default_value_t = replay::GIVE_UP_AFTER_S)]
    timeout_s: u64,
}

/// `edgeloop demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Directory with datatraining.txt and datatest2.txt.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// Publishes the rows (until done or SIGTERM/SIGINT) and prints the counts.
pub fn replay(args: ReplayArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let ReplayArgs {
        file,
        topic,
        rate,
        broker,
        drop_columns,
        limit,
        timeout_s,
    } = args;
    let (host, port) = parse_mqtt_url(&broker).map_err(anyhow::Error::msg)?;
    let opts = ReplayOptions {
        file,
        topic,
        rate,
        host,
        port,
        drop_columns,
        limit,
        // Not `edgeloop-…`: the embedded broker keeps the daemon's client
        // id (`edgeloop` by default) and `{id}-…` to the daemon itself.
        client_id: format!("replay-{}", std::process::id()),
        give_up_after: std::time::Duration::from_secs(timeout_s),
    };
    let report = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        let payloads = replay::csv_payloads(&opts)?;
        replay::publish_all(&opts, payloads, shutdown).await
    })?;
    outln!(
        "published {} messages, {} acknowledged",
        report.published,
        report.acknowledged
    )?;
    Ok(())
}

/// Runs the demo and prints its summary.
pub fn demo(args: DemoArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let DemoArgs { json, data_dir } = args;
    let dir = data_dir.unwrap_or_else(crate::demo::default_data_dir);
    let summary = runtime.block_on(crate::demo::run(&dir))?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&summary)?)?;
    } else {
        out!("{}", crate::demo::render(&summary))?;
    }
    Ok(())
}
