//! The serde view of turnd.toml.
