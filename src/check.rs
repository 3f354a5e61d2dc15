//! `lameduck --check`: everything start-up would read and verify, without binding or
//! starting anything — the configuration's syntax and meaning, and every certificate, key,
//! CA and token file it names, in one pass: each problem, of the config or of a file, is one
//! `error:` diagnostic at the file:line:col of the value at fault, with the resolved path
//! that was tried.

use std::path::Path;

use crate::config::read_token_file;
use crate::config::{line_col, Checked, ConfigError, Diagnostic, FileKind, FileRef};
use crate::tls::{self, Culprit};

/// Checks the configuration at `path` as start-up would. On success, the warnings to show
/// (an expired certificate, say), each line `path[:line:col]: warning: …`; on failure, every
/// error.
pub fn check(path: &Path) -> Result<Vec<String>, ConfigError> {
    let Checked { text, config, files } = Checked::load(path)?;
    let mut errors = config.as_ref().err().cloned().unwrap_or_default();
    let mut warnings = Vec::new();
    for file in &files {
        check_file(file, &mut errors, &mut warnings);
    }
    if let Ok(config) = &config {
        errors.extend(tls::check_server_names(config).into_iter().map(Diagnostic::whole));
        warnings.extend(config.warnings().into_iter().map(Diagnostic::whole));
    }
    if !errors.is_empty() {
        errors.sort_by_key(|d| d.span.as_ref().map_or(0, |s| s.start));
        return Err(ConfigError::new(path, &text, errors));
    }
    Ok(warnings.iter().map(|w| warning_line(path, &text, w)).collect())
}

/// Reads `file` as start-up will; a problem becomes an error at the value naming the file.
fn check_file(file: &FileRef, errors: &mut Vec<Diagnostic>, warnings: &mut Vec<Diagnostic>) {
    match &file.kind {
        FileKind::CertKey { key_span, files } => match tls::check_cert_key(files) {
            Ok(found) => warnings.extend(found.into_iter().map(|w| Diagnostic::at(file.span.clone(), w))),
            Err((Culprit::Cert, e)) => errors.push(Diagnostic::at(file.span.clone(), e)),
            Err((Culprit::Key, e)) => errors.push(Diagnostic::at(key_span.clone(), e)),
        },
        FileKind::Ca => {
            if let Err(e) = tls::client_config(Some(&file.path)) {
                errors.push(Diagnostic::at(file.span.clone(), e.replacen("certificate file", "ca file", 1)));
            }
        }
        FileKind::Token => {
            if let Err(e) = read_token_file(&file.path) {
                errors.push(Diagnostic::at(file.span.clone(), e));
            }
        }
    }
}

/// `path:line:col: warning: …` (or `path: warning: …` for the file as a whole).
fn warning_line(path: &Path, text: &str, warning: &Diagnostic) -> String {
    match &warning.span {
        Some(span) => {
            let (line, col) = line_col(text, span.start);
            format!("{}:{line}:{col}: warning: {}", path.display(), warning.message)
        }
        None => format!("{}: warning: {}", path.display(), warning.message),
    }
}
