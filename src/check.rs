//! `lameduck --check`: everything start-up would read and verify, without binding or
//! starting anything — the configuration's syntax and meaning, then every certificate, key
//! and CA file it names.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError};
use crate::tls::TlsMaterial;

/// Why a configuration would not start.
#[derive(Debug)]
pub enum CheckError {
    /// The file is unreadable, or not valid `proxy.toml` (every problem, with file:line:col).
    Config(ConfigError),
    /// Certificates, keys or CA files cannot be used; one line per problem.
    Tls {
        /// The configuration file, which each line names first.
        path: PathBuf,
        /// What is wrong, one entry per file.
        problems: Vec<String>,
    },
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckError::Config(e) => e.fmt(f),
            CheckError::Tls { path, problems } => {
                let lines: Vec<String> =
                    problems.iter().map(|p| format!("{}: {p}", path.display())).collect();
                f.write_str(&lines.join("\n"))
            }
        }
    }
}

impl std::error::Error for CheckError {}

/// Checks the configuration at `path` as start-up would. On success, the warnings to show
/// (an expired certificate, say), each line prefixed with the file; on failure, every error.
pub fn check(path: &Path) -> Result<Vec<String>, CheckError> {
    let config = Config::load(path).map_err(CheckError::Config)?;
    match TlsMaterial::load(&config) {
        Ok(material) => {
            Ok(material.warnings.iter().map(|w| format!("{}: warning: {w}", path.display())).collect())
        }
        Err(problems) => Err(CheckError::Tls { path: path.to_owned(), problems }),
    }
}
