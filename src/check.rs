//! `lameduck --check`: everything start-up would read and verify, without binding or
//! starting anything — the configuration's syntax and meaning, then every certificate, key,
//! CA and token file it names.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::admin::read_token;
use crate::config::{Config, ConfigError};
use crate::tls::TlsMaterial;

/// Why a configuration would not start.
#[derive(Debug)]
pub enum CheckError {
    /// The file is unreadable, or not valid `proxy.toml` (every problem, with file:line:col).
    Config(ConfigError),
    /// Certificates, keys, CA files or the admin token file cannot be used; one line per
    /// problem.
    Files {
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
            CheckError::Files { path, problems } => {
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
    let material = TlsMaterial::load(&config);
    let token = config.admin.as_ref().map(read_token).transpose();
    match (material, token) {
        (Ok(material), Ok(_)) => {
            let warnings = material.warnings.into_iter().chain(config.warnings());
            Ok(warnings.map(|w| format!("{}: warning: {w}", path.display())).collect())
        }
        (material, token) => {
            let mut problems = material.err().unwrap_or_default();
            problems.extend(token.err());
            Err(CheckError::Files { path: path.to_owned(), problems })
        }
    }
}
