//! The helper commands containers use, run as the real binary against a real daemon:
//! `lameduck probe URL` (exit 0 on a 2xx, 1 with one line saying why) and `lameduck
//! wait-drained` (returns once lameduck has exited, at once when nothing listens, 1 at its
//! timeout); `-t` as `--check`; usage errors exit 1. And the container recipe
//! (`deploy/container/Dockerfile`) read as an image runs it: its ENTRYPOINT and CMD as PID 1
//! of a new PID namespace, its HEALTHCHECK command, its STOPSIGNAL.
//!
//! Waits are events: the daemon's log lines (`ready`, `grace`, `draining`, and the debug line
//! `admin connection` each poll of `wait-drained` leaves), a request reaching the backend,
//! processes exiting; each is bounded.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};
use tokio::time::{timeout, Instant};

use crate::harness::{
    binary, config, config_for, full, gate, message, raw_get, secs, Backend, Blackhole, DeadPort, Lameduck,
    PROMPT,
};

/// `[drain]` with a long grace (the test ends before it does) and an admin address.
const GRACE_AND_ADMIN: &str =
    "[drain]\ndeadline = \"30s\"\ngrace = \"20s\"\n\n[admin]\naddr = \"127.0.0.1:0\"\n";
/// An admin address and the default drain.
const ADMIN: &str = "[drain]\ndeadline = \"30s\"\n\n[admin]\naddr = \"127.0.0.1:0\"\n";

/// `lameduck ARGS…` run to its end (at most `within`): the status, stdout, stderr.
pub async fn run(args: &[&str], within: Duration) -> (i32, String, String) {
    let mut command = Command::new(binary());
    command.args(args).stdin(Stdio::null()).kill_on_drop(true);
    let output: Output = match timeout(within, command.output()).await {
        Ok(output) => output.expect("run lameduck"),
        Err(_) => panic!("lameduck {args:?} still running after {within:?}"),
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (output.status.code().expect("an exit code, not a signal"), text(&output.stdout), text(&output.stderr))
}

/// `lameduck wait-drained --admin ADDR --timeout …` as a running child.
fn spawn_wait_drained(admin: std::net::SocketAddr, within: &str) -> Child {
    Command::new(binary())
        .args(["wait-drained", "--admin", &admin.to_string(), "--timeout", within])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn wait-drained")
}

/// A child's status and its output, waiting at most `within`.
async fn finished(child: Child, within: Duration) -> (i32, String, String) {
    let output = match timeout(within, child.wait_with_output()).await {
        Ok(output) => output.expect("wait for the child"),
        Err(_) => panic!("still running after {within:?}"),
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (output.status.code().expect("an exit code"), text(&output.stdout), text(&output.stderr))
}

fn is_admin_connection(line: &Value) -> bool {
    message(line) == "admin connection"
}

#[tokio::test]
async fn probe_exits_0_on_2xx_and_1_otherwise_saying_why() {
    let backend = Backend::named("app").await;
    let proxy = Lameduck::start(&config(&[backend.addr], "", GRACE_AND_ADMIN)).await;
    let admin = proxy.admin_addr.expect("admin listening");

    let url = format!("http://{admin}/healthz");
    let (status, out, err) = run(&["probe", &url], PROMPT).await;
    assert_eq!((status, out.as_str(), err.as_str()), (0, format!("{url}: 200 OK\n").as_str(), ""));
    let (status, out, _) = run(&["probe", &format!("http://{admin}/readyz")], PROMPT).await;
    assert_eq!(status, 0, "{out}");
    // Any http:// URL, through the proxy too.
    let (status, out, _) = run(&["probe", &format!("http://{}/", proxy.addr)], PROMPT).await;
    assert_eq!(status, 0, "{out}");

    let url = format!("http://{admin}/nope");
    let (status, out, err) = run(&["probe", &url], PROMPT).await;
    assert_eq!((status, out.as_str()), (1, ""));
    assert!(err.starts_with(&format!("{url}: 404 Not Found: not found")), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");

    let dead = DeadPort::new();
    let url = format!("http://{}/healthz", dead.addr);
    let (status, _, err) = run(&["probe", &url], PROMPT).await;
    assert_eq!(status, 1, "{err}");
    assert!(err.starts_with(&format!("{url}: connect {}: ", dead.addr)), "{err}");
    assert!(err.to_lowercase().contains("refused"), "{err}");

    let hole = Blackhole::start().await;
    let started = Instant::now();
    let (status, _, err) =
        run(&["probe", "--timeout", "300ms", &format!("http://{}/", hole.addr)], PROMPT).await;
    assert_eq!(status, 1, "{err}");
    assert!(err.trim_end().ends_with("no answer within 300ms"), "{err}");
    assert!(started.elapsed() < secs(3), "bounded by --timeout: {:?}", started.elapsed());

    let (status, _, err) = run(&["probe", "https://127.0.0.1/"], PROMPT).await;
    assert_eq!(status, 1, "{err}");
    assert!(err.contains("only http:// is probed"), "{err}");

    // In the grace period /readyz says 503 (the probe fails), /healthz still 200.
    proxy.sigterm();
    proxy.wait_for_message("grace").await;
    let url = format!("http://{admin}/readyz");
    let (status, _, err) = run(&["probe", &url], PROMPT).await;
    assert_eq!((status, err.as_str()), (1, format!("{url}: 503 Service Unavailable: draining\n").as_str()));
    let (status, _, _) = run(&["probe", &format!("http://{admin}/healthz")], PROMPT).await;
    assert_eq!(status, 0);
}

#[tokio::test]
async fn wait_drained_returns_only_after_lameduck_has_exited() {
    let (opener, held) = gate();
    let backend = Backend::start(move |_req| {
        let held = held.clone();
        async move {
            held.wait().await;
            hyper::Response::new(full("done"))
        }
    })
    .await;
    let mut proxy = Lameduck::start(&config(&[backend.addr], "", ADMIN)).await;
    let admin = proxy.admin_addr.expect("admin listening");
    let addr = proxy.addr;
    let slow = tokio::spawn(async move { raw_get(addr, "/slow").await });
    backend.arrived().await;
    proxy.sigterm();
    proxy.wait_for_message("draining").await;

    // The request holds the drain. wait-drained polls (each poll is a connection the admin
    // endpoint logs) and goes on waiting.
    let mut mark = proxy.logs.mark();
    let mut waiter = spawn_wait_drained(admin, "30s");
    for polls in 1..=3 {
        proxy.wait_for_log_after(mark, is_admin_connection, PROMPT).await;
        mark = proxy.logs.mark();
        assert!(
            waiter.try_wait().expect("try_wait").is_none(),
            "wait-drained returned after {polls} polls while lameduck drains"
        );
    }
    assert!(!proxy.has_exited(), "lameduck waits for the held request");

    opener.open();
    let response = timeout(PROMPT, slow).await.expect("the held request completes").expect("join");
    assert_eq!(response.status, 200);
    let (status, out, err) = finished(waiter, PROMPT).await;
    assert_eq!(status, 0, "{out}{err}");
    assert!(out.starts_with(&format!("drained: {admin} refuses connections (waited ")), "{out}");
    // It returned because lameduck's admin socket closed, which happens as the process exits.
    assert_eq!(proxy.exit_within(secs(2)).await, 0);
}

#[tokio::test]
async fn wait_drained_returns_at_once_when_nothing_listens() {
    let dead = DeadPort::new();
    let started = Instant::now();
    let (status, out, err) = run(&["wait-drained", "--admin", &dead.addr.to_string()], PROMPT).await;
    assert_eq!(status, 0, "{out}{err}");
    assert!(out.starts_with(&format!("drained: {} refuses connections", dead.addr)), "{out}");
    assert!(started.elapsed() < secs(2), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn wait_drained_gives_up_at_its_timeout_while_lameduck_serves() {
    let backend = Backend::named("app").await;
    let proxy =
        Lameduck::start(&format!("{}\n[admin]\naddr = \"127.0.0.1:0\"\n", config_for(backend.addr))).await;
    let admin = proxy.admin_addr.expect("admin listening");
    let started = Instant::now();
    let (status, out, err) =
        run(&["wait-drained", "--admin", &admin.to_string(), "--timeout", "500ms"], PROMPT).await;
    assert_eq!((status, out.as_str()), (1, ""), "{err}");
    assert_eq!(
        err,
        format!("lameduck's admin address {admin} still accepts connections after 500ms: not drained\n")
    );
    assert!(started.elapsed() >= Duration::from_millis(500), "{:?}", started.elapsed());
    // It polled more than once.
    let polls = proxy.logs.lines().iter().filter(|l| is_admin_connection(l)).count();
    assert!(polls >= 3, "{polls} polls in 500 ms");
}

#[tokio::test]
async fn t_is_check_and_usage_errors_exit_1() {
    let backend = Backend::named("app").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config_for(backend.addr)).expect("write config");
    let path = path.to_str().expect("utf-8 path");
    let (status, out, _) = run(&["-t", "--config", path], PROMPT).await;
    assert_eq!((status, out.as_str()), (0, "ok\n"));
    std::fs::write(path, "[[listen]]\naddr = \"nope\"\n").expect("write config");
    let (status, _, err) = run(&["-t", "--config", path], PROMPT).await;
    assert_eq!(status, 1, "{err}");

    for args in
        [&["--bogus"][..], &["probe"], &["wait-drained", "--admin", "not-an-address"], &["-t", "probe", "x"]]
    {
        let (status, _, err) = run(args, PROMPT).await;
        assert_eq!(status, 1, "{args:?}: {err}");
        assert!(err.contains("error:"), "{args:?}: {err}");
    }
    let (status, out, _) = run(&["--help"], PROMPT).await;
    assert_eq!(status, 0);
    assert!(out.contains("probe") && out.contains("wait-drained"), "{out}");
}

// ---- the container recipe ----

/// `deploy/container/Dockerfile`'s instructions of the final stage, continuation lines joined:
/// (instruction, arguments).
fn final_stage() -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/container/Dockerfile");
    let text = std::fs::read_to_string(&path).expect("read the Dockerfile");
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(start) => current.push_str(start),
            None => {
                current.push_str(line);
                if !current.trim().is_empty() {
                    joined.push(std::mem::take(&mut current));
                }
            }
        }
    }
    let instructions: Vec<(String, String)> = joined
        .iter()
        .map(|l| {
            let (name, args) = l.trim().split_once(char::is_whitespace).unwrap_or((l, ""));
            (name.to_ascii_uppercase(), args.trim().to_owned())
        })
        .collect();
    let last_from = instructions.iter().rposition(|(name, _)| name == "FROM").expect("a FROM");
    instructions[last_from..].to_vec()
}

/// The arguments of the one `name` instruction of the final stage.
fn instruction<'a>(stage: &'a [(String, String)], name: &str) -> &'a str {
    let found: Vec<_> = stage.iter().filter(|(n, _)| n == name).collect();
    assert_eq!(found.len(), 1, "one {name} in the final stage: {stage:?}");
    &found[0].1
}

/// An exec-form (JSON array) argument list.
fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not exec form ({e}): {args}"))
}

const IMAGE_BINARY: &str = "/usr/local/bin/lameduck";
const IMAGE_CONFIG: &str = "/etc/lameduck/proxy.toml";

#[test]
fn the_image_runs_lameduck_as_non_root_with_its_config_and_no_curl() {
    let stage = final_stage();
    assert_eq!(exec_form(instruction(&stage, "ENTRYPOINT")), [IMAGE_BINARY]);
    assert_eq!(exec_form(instruction(&stage, "CMD")), ["--config", IMAGE_CONFIG]);
    assert_eq!(instruction(&stage, "STOPSIGNAL"), "SIGTERM");
    let user = instruction(&stage, "USER");
    let uid = user.split(':').next().unwrap_or_default();
    assert!(uid.parse::<u32>().is_ok_and(|uid| uid != 0), "a numeric non-root USER: {user}");
    let exposed: Vec<&str> = instruction(&stage, "EXPOSE").split_whitespace().collect();
    assert_eq!(exposed, ["8080", "9901"]);
    let copied = instruction(&stage, "COPY");
    assert!(copied.ends_with(IMAGE_BINARY), "the binary goes to {IMAGE_BINARY}: {copied}");
    let all =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/container/Dockerfile"))
            .expect("read the Dockerfile")
            .to_lowercase();
    for tool in ["curl", "wget", "apt-get install"] {
        let uses = all.lines().filter(|l| !l.trim_start().starts_with('#') && l.contains(tool)).count();
        assert_eq!(uses, 0, "the Dockerfile installs or runs {tool}");
    }
}

/// Runs the binary as PID 1 of a new PID namespace, as a container runtime does.
const UNSHARE: [&str; 5] = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"];

/// The one child process of `parent` (host pids), from `/proc`.
fn only_child(parent: i32) -> i32 {
    let children: Vec<i32> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid =
                stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
            ppid == Some(parent)
        })
        .collect();
    match children.as_slice() {
        [child] => *child,
        other => panic!("{parent} has children {other:?}, not one"),
    }
}

#[tokio::test]
async fn the_images_command_serves_as_pid_1_passes_its_healthcheck_and_drains_on_its_stopsignal() {
    let unshare_ok = std::process::Command::new(UNSHARE[0]).args(&UNSHARE[1..]).arg("true").output();
    if !unshare_ok.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: `unshare --pid` fails here (not root?)");
        return;
    }
    let stage = final_stage();
    // The harness runs `BINARY --config PATH --log-format json --log-level debug`: the image's
    // ENTRYPOINT and CMD with the config's path mapped into the test's temp dir.
    assert_eq!(exec_form(instruction(&stage, "CMD"))[..1], ["--config"]);
    let backend = Backend::named("app").await;
    let config = config(&[backend.addr], "", ADMIN);
    let mut proxy = Lameduck::spawn_under(&UNSHARE, &config, |_| {}).ready().await;
    let ready = proxy.wait_for_message("ready").await;
    assert_eq!(ready["pid"], 1, "lameduck is PID 1: {ready}");
    let admin = proxy.admin_addr.expect("admin listening");

    // HEALTHCHECK [OPTIONS] CMD [exec form]: the binary and the admin port mapped.
    let healthcheck = instruction(&stage, "HEALTHCHECK");
    let (_, command) = healthcheck.split_once("CMD ").expect("HEALTHCHECK … CMD […]");
    let mut command = exec_form(command);
    assert_eq!(command[0], IMAGE_BINARY);
    assert_eq!(command[1], "probe");
    let url = command.last_mut().expect("a URL");
    assert_eq!(url, "http://127.0.0.1:9901/healthz");
    *url = format!("http://{admin}/healthz");
    let args: Vec<&str> = command[1..].iter().map(String::as_str).collect();
    let (status, out, err) = run(&args, PROMPT).await;
    assert_eq!(status, 0, "HEALTHCHECK {command:?}: {out}{err}");

    // `docker stop` sends STOPSIGNAL to the container's PID 1.
    let signal = match instruction(&stage, "STOPSIGNAL") {
        "SIGTERM" => libc::SIGTERM,
        other => panic!("unexpected STOPSIGNAL {other}"),
    };
    let pid1 = only_child(proxy.pid());
    // SAFETY: kill(2) on lameduck's host pid, a child of our own unshare that we have not reaped.
    assert_eq!(unsafe { libc::kill(pid1, signal) }, 0);
    proxy.wait_for_message("drain started").await;
    assert_eq!(proxy.exit_within(PROMPT).await, 0, "unshare exits with PID 1's status");
    let summary = proxy.summary().await;
    assert_eq!(summary["exit.status"], 0, "{summary}");
}
