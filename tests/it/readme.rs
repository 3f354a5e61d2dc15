//! The README's "Try it" section, run as written: its `sh` blocks, joined, in bash with `-e`,
//! in a scratch directory laid out like the repository (`proxy.toml`, `README.md`, and
//! `target/release/…` linked to the binaries `cargo test` built). The one liberty taken: the
//! block's `cargo build` lines are skipped (a nested cargo would rebuild everything in
//! release mode), by a shell function `cargo` that only says so.
//!
//! The blocks use the demo's fixed ports (8080, 9000, 9901). When one is taken the test
//! skips, saying which, unless `LAMEDUCK_README_TEST=require` (as `.ci/run` sets), when it
//! fails saying which. The whole run is bounded: after [`WITHIN`] the script's process group
//! is killed and the test fails with what it printed.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio::time::timeout;

use crate::harness::{backend_binary, binary};

/// The longest the blocks may take (a 3 s slow request, a 2 s stream, start-up of debug builds).
const WITHIN: Duration = Duration::from_secs(60);

/// The ports the README's demo uses.
const PORTS: [u16; 3] = [8080, 9000, 9901];

/// The `sh` blocks of the README section headed `heading`, joined.
fn shell_blocks(readme: &str, heading: &str) -> String {
    let start = readme.find(&format!("\n{heading}\n")).unwrap_or_else(|| panic!("README has no {heading:?}"));
    let section = &readme[start + heading.len() + 2..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let mut script = String::new();
    let mut inside = false;
    for line in section.lines() {
        match (inside, line.trim_end()) {
            (false, "```sh") => inside = true,
            (true, "```") => inside = false,
            (true, line) => script.push_str(&format!("{line}\n")),
            _ => {}
        }
    }
    assert!(!script.is_empty(), "no ```sh block under {heading:?}");
    script
}

/// The demo ports something already listens on.
fn taken_ports() -> Vec<u16> {
    PORTS.into_iter().filter(|port| TcpListener::bind(("127.0.0.1", *port)).is_err()).collect()
}

/// Runs `script` as the README's reader would, from a copy of the repository's layout:
/// (exit status, stdout and stderr together).
async fn run_as_pasted(script: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in ["proxy.toml", "README.md"] {
        std::fs::copy(repo.join(file), dir.path().join(file)).expect("copy a repository file");
    }
    let release = dir.path().join("target/release");
    std::fs::create_dir_all(release.join("examples")).expect("mkdir target/release/examples");
    std::os::unix::fs::symlink(binary(), release.join("lameduck")).expect("link the binary");
    std::os::unix::fs::symlink(backend_binary(), release.join("examples/legacy_backend"))
        .expect("link the demo backend");
    let prelude = "cargo() { echo \"(skipped: cargo $*; the test runs what cargo test built)\"; }\n";
    let mut command = Command::new("bash");
    command
        .args(["-e", "-o", "pipefail", "-c"])
        .arg(format!("{prelude}{script}"))
        .current_dir(dir.path())
        .env_remove("LAMEDUCK_CONFIG")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // A group of its own, so every process the script starts can be killed with it.
    command.as_std_mut().process_group(0);
    let child = command.spawn().expect("run bash");
    let pgid = child.id().expect("the script's pid") as i32;
    let waited = timeout(WITHIN, child.wait_with_output()).await;
    // Whatever the script left running (after a failure half-way) goes with its group.
    kill_group(pgid);
    match waited {
        Ok(output) => {
            let output = output.expect("wait for bash");
            let text = String::from_utf8_lossy(&output.stdout).into_owned()
                + "\n--- stderr ---\n"
                + &String::from_utf8_lossy(&output.stderr);
            (output.status.code(), text)
        }
        Err(_) => (None, format!("still running after {WITHIN:?}")),
    }
}

/// SIGKILL to process group `pgid` (gone already is fine).
fn kill_group(pgid: i32) {
    let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{pgid}")]).status();
}

#[tokio::test]
async fn readme_try_it_works_when_pasted() {
    let taken = taken_ports();
    if !taken.is_empty() {
        let why = format!(
            "README \"Try it\" needs ports {PORTS:?} free, and {taken:?} are taken (another lameduck or demo running?)"
        );
        if std::env::var("LAMEDUCK_README_TEST").as_deref() == Ok("require") {
            panic!("{why}");
        }
        eprintln!("SKIPPED readme_try_it_works_when_pasted: {why}; set LAMEDUCK_README_TEST=require to fail instead");
        return;
    }
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).expect("README");
    let script = shell_blocks(&readme, "## Try it");
    let (status, out) = run_as_pasted(&script).await;
    assert_eq!(status, Some(0), "the README's \"Try it\" blocks failed:\n{out}");
    // What the comments promise.
    let expect = [
        ("ready\n", "readiness"),
        ("line 9\n", "the streamed response"),
        ("HTTP/2 200", "the h2c request"),
        ("refused: the listener is closed", "the refused connection after the drain signal"),
        ("slept 3000 ms", "the slow request completing during the drain"),
        ("lameduck exited with 0", "a clean drain"),
        ("drain started", "lameduck's log"),
    ];
    for (needle, what) in expect {
        assert!(out.contains(needle), "no {needle:?} ({what}) in the output:\n{out}");
    }
    let forwarded = out.matches("HTTP/1.1 200").count();
    assert!(forwarded >= 3, "{forwarded} HTTP/1.1 200 answers, 3 expected:\n{out}");
}
