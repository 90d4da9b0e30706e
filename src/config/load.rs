//! TOML file -> validated Config, with errors naming file, line and key.
use std::path::Path;

use super::Config;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    todo!("{path:?}")
}

pub fn load_str(text: &str, source: &Path) -> Result<Config, ConfigError> {
    todo!("{text}{source:?}")
}
