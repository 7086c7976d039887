//! `edgeloop bench footprint` and `edgeloop bench ingest`: measurements of
//! this build (BENCHMARKS.md).

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

/// `edgeloop bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchCommand,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Binary sizes, resident memory and time to ready.
    ///
    /// Binary sizes (aarch64, armv7), resident memory idle, ingesting at
    /// 5,000 messages/s and training 100,000 samples, and time to ready.
    Footprint {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Short runs: 1 s of ingest, 5,000 training samples.
        ///
        /// Checks the command, not the board.
        #[arg(long)]
        quick: bool,
    },
    /// Ingest throughput of the daemon against a bare QoS 1 subscriber.
    ///
    /// The daemon (ack after commit) against a bare QoS 1 subscriber on the
    /// same broker, embedded and mosquitto, steady publishing and a drained
    /// backlog (src/bench/ingest.rs).
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
        /// Publisher rate of the steady rows, msg/s.
        ///
        /// Default: as fast as its QoS 1 in-flight window allows.
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

/// Runs the measurement and prints its report.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.what {
        BenchCommand::Footprint { json, quick } => {
            let report = crate::bench::footprint(&crate::bench::FootprintOptions {
                binary: std::env::current_exe().context("locating the edgeloop binary")?,
                target_dir: crate::bench::target_dir(),
                quick,
            })?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                out!("{}", crate::bench::render(&report))?;
            }
            Ok(())
        }
        BenchCommand::Ingest {
            json,
            quick,
            messages,
            rate,
            timeout_s,
            mosquitto,
        } => {
            use crate::bench::ingest;
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
                outln!("{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                out!("{}", ingest::render(&report))?;
            }
            Ok(())
        }
    }
}
