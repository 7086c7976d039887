//! The error of a setting that cannot be used, shared by every stage's
//! configuration section and by [`crate::config`], which composes them
//! (the lowest layer: it imports nothing of the crate).

/// Errors from loading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer could not be read or parsed, or a key is unknown or of the wrong type.
    #[error("config: {0}")]
    Load(String),
    /// A value is out of range or inconsistent.
    #[error("config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}
