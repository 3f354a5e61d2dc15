//! Where the access log goes: `[log] access = "stderr"` (with the other lines), `"off"`, or a
//! file of its own, which a reload (SIGHUP) reopens so that logrotate's `postrotate` can move
//! it away and have lameduck write a new one.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tracing::Metadata;
use tracing_subscriber::fmt::writer::{EitherWriter, MakeWriter};

use super::journal::{Line, Stderr};

/// The tracing target of access log lines.
pub const TARGET: &str = "lameduck::access";

/// The access log file, once opened: reopened by [`reopen`].
static FILE: OnceLock<Arc<AccessFile>> = OnceLock::new();

/// An append-only file that can be reopened at the same path.
#[derive(Debug)]
pub(super) struct AccessFile {
    path: PathBuf,
    file: Mutex<File>,
}

impl AccessFile {
    /// Opens `path` for appending (created with mode 0640 if missing) and makes it the one
    /// [`reopen`] reopens.
    pub(super) fn open(path: &Path) -> io::Result<Arc<AccessFile>> {
        let file = Arc::new(AccessFile { path: path.to_owned(), file: Mutex::new(open(path)?) });
        let _ = FILE.set(file.clone());
        Ok(file)
    }

    fn lock(&self) -> MutexGuard<'_, File> {
        self.file.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn open(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().create(true).append(true).mode(0o640).open(path)
}

/// Reopens the access log file, if there is one: lines from now on go to whatever file is at
/// its path (a new one after a rotation). Returns the path reopened.
///
/// # Errors
/// When the file cannot be opened; the old one is kept then.
pub fn reopen() -> Result<Option<PathBuf>, String> {
    let Some(access) = FILE.get() else { return Ok(None) };
    let file = open(&access.path)
        .map_err(|e| format!("cannot reopen the access log {}: {e}", access.path.display()))?;
    *access.lock() = file;
    Ok(Some(access.path.clone()))
}

/// Routes each line: access lines to the access file when there is one, the rest to stderr.
#[derive(Debug, Clone)]
pub(super) struct Route {
    pub(super) stderr: Stderr,
    pub(super) access: Option<Arc<AccessFile>>,
}

/// One access line's writer: the file, locked for the line.
pub struct FileLine<'a>(MutexGuard<'a, File>);

impl Write for FileLine<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<'a> MakeWriter<'a> for Route {
    type Writer = EitherWriter<Line, FileLine<'a>>;

    fn make_writer(&'a self) -> Self::Writer {
        EitherWriter::A(self.stderr.make_writer())
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        match &self.access {
            Some(access) if meta.target() == TARGET => EitherWriter::B(FileLine(access.lock())),
            _ => EitherWriter::A(self.stderr.make_writer_for(meta)),
        }
    }
}
