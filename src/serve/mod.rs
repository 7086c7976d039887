//! Serving: the inference engine ([`engine`], tract), the registry of
//! serving versions ([`registry`], atomic swaps), predictions over MQTT
//! ([`predictions`]) and the HTTP API ([`http`]).

pub mod engine;
pub mod http;
pub mod predictions;
pub mod registry;
