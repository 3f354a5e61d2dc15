//! Build script: the git commit this binary was built from, for `--version` and
//! `lameduck_build_info` (`LAMEDUCK_GIT_COMMIT`, empty outside a git checkout, and
//! `LAMEDUCK_VERSION_LONG`, `0.1.0 (abc1234)` or `0.1.0`). Setting `LAMEDUCK_GIT_COMMIT` in the
//! environment overrides git (a build from a source tarball).
//!
//! Cargo reruns it when `HEAD` moves (a checkout) or the branch it names moves (a commit), so a
//! cached build never carries a stale commit. In a worktree `.git` is a file naming the real
//! git directory, and branch refs live in the common directory; `git rev-parse` resolves both.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=LAMEDUCK_GIT_COMMIT");
    let commit = std::env::var("LAMEDUCK_GIT_COMMIT").ok().or_else(git_commit).unwrap_or_default();
    println!("cargo:rustc-env=LAMEDUCK_GIT_COMMIT={commit}");
    let version = std::env::var("CARGO_PKG_VERSION").expect("cargo sets CARGO_PKG_VERSION");
    let long = match commit.is_empty() {
        true => version,
        false => format!("{version} ({commit})"),
    };
    println!("cargo:rustc-env=LAMEDUCK_VERSION_LONG={long}");
}

/// The short commit of `HEAD`, registering the files whose change must rerun this script.
fn git_commit() -> Option<String> {
    let git_dir = git(&["rev-parse", "--git-dir"]).map(PathBuf::from)?;
    let common_dir = git(&["rev-parse", "--git-common-dir"]).map(PathBuf::from).unwrap_or(git_dir.clone());
    let head = git_dir.join("HEAD");
    rerun_if_changed(&head);
    if let Some(reference) =
        std::fs::read_to_string(&head).ok().and_then(|h| h.trim().strip_prefix("ref: ").map(str::to_owned))
    {
        // The loose ref when there is one; once packed, it lives in packed-refs, and the next
        // commit writes a loose one again (the directory it goes into is watched for that).
        let loose = common_dir.join(&reference);
        match loose.exists() {
            true => rerun_if_changed(&loose),
            false => loose.parent().into_iter().for_each(rerun_if_changed),
        }
        rerun_if_changed(&common_dir.join("packed-refs"));
    }
    git(&["rev-parse", "--short=7", "HEAD"])
}

fn rerun_if_changed(path: &Path) {
    // A path that does not exist makes cargo rerun every time; skip those.
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// `git ARGS` in the package directory, its trimmed stdout when it succeeds.
fn git(args: &[&str]) -> Option<String> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")?;
    let output = Command::new("git").args(args).current_dir(&dir).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?.trim().to_owned();
    let path = Path::new(&text);
    match (output.status.success(), text.is_empty()) {
        (true, false) if args[1].ends_with("dir") && path.is_relative() => {
            Some(Path::new(&dir).join(path).display().to_string())
        }
        (true, false) => Some(text),
        _ => None,
    }
}
