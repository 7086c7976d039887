//! Serving: the inference engine ([`engine`], tract), the registry of
//! serving versions ([`registry`], atomic swaps), predictions over MQTT
//! ([`predictions`]), the HTTP API ([`http`]) and the intake of models
//! brought from elsewhere ([`intake`]).

pub mod engine;
pub mod http;
pub mod intake;
pub mod predictions;
pub mod registry;
