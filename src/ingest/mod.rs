//! Ingest: MQTT in, samples out. The source ([`mqtt`]) receives publishes
//! over a [`link`] (one connection, MQTT 5 or 3.1.1, behind one interface),
//! the writer ([`writer`]) decodes them ([`decode`]) and commits them to the
//! store before acknowledging them; [`categories`] gives the strings of
//! categorical fields their codes. [`broker`] is the optional in-process
//! broker; [`replay`] publishes a CSV file as messages; [`csv_file`] reads a
//! labelled CSV file for the offline commands (`train`, `evaluate`).

#[cfg(feature = "embedded-broker")]
pub mod broker;
pub mod categories;
pub mod csv_file;
pub mod decode;
pub mod link;
pub mod mqtt;
pub mod mqtt_config;
pub mod replay;
pub mod writer;

/// Errors of the ingest components.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("the writer stopped while the MQTT source was running")]
    WriterGone,
    #[error("a blocking task failed: {0}")]
    Join(String),
    #[error("embedded broker: {0}")]
    Broker(String),
    #[error("replay of {file}: {reason}")]
    Replay { file: String, reason: String },
}
