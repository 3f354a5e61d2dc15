//! The Kubernetes manifests under `deploy/kubernetes/`, read as the kubelet reads them.
//!
//! - Their invariants, read from the files: the termination grace period covers lameduck's
//!   drain (and, supervised, the backend's stop) with a margin; the preStop hook on the legacy
//!   container waits for lameduck's admin address; every probe and hook is `exec` on the
//!   loopback admin address (an `httpGet` would go to the pod IP, where nothing listens); the
//!   ports agree; each ConfigMap's `proxy.toml` passes `lameduck --check`.
//! - A pod-termination simulation of `sidecar.yaml`: the test plays the kubelet. It starts the
//!   two "containers" as processes on one loopback address, as a pod shares its network: the
//!   demo backend (`examples/legacy_backend.rs`, which dies on SIGTERM mid-request) as the
//!   legacy app, and lameduck with the ConfigMap's config, only its addresses rewritten to free
//!   ports. With a 3 s request in flight it terminates the pod: the legacy container's preStop
//!   hook (the manifest's command: the real `lameduck wait-drained`) runs while lameduck gets
//!   SIGTERM at once (it has no hook); the legacy app gets SIGTERM only when its hook returns;
//!   whatever is left at `terminationGracePeriodSeconds` is SIGKILLed. The shipped grace (5 s)
//!   and deadline are used as they are.
//!
//! Every wait is an event (a log line, a line of the backend's output, a process exit) and
//! bounded, the whole termination by the manifest's grace period.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};
use tokio::time::{timeout, timeout_at, Instant};
use yaml_rust2::{Yaml, YamlLoader};

use crate::harness::{backend_binary, binary, message, raw_get, Lameduck, PROMPT};

/// What is left between lameduck's worst case and the kubelet's SIGKILL, at least.
const MARGIN: Duration = Duration::from_secs(5);
/// The lameduck binary inside the lameduck image.
const IMAGE_BINARY: &str = "/usr/local/bin/lameduck";
/// Where the ConfigMap is mounted, and the file lameduck is told to read.
const CONFIG_DIR: &str = "/etc/lameduck";
const CONFIG_PATH: &str = "/etc/lameduck/proxy.toml";
/// What the demo backend prints on stderr when SIGTERM kills it.
const GOT_SIGTERM: &str = "legacy backend: got SIGTERM";

// ---- reading the manifests ----

/// Every document of `deploy/kubernetes/NAME`.
fn manifest(name: &str) -> Vec<Yaml> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The one document of `kind`.
fn of_kind<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    let found: Vec<_> = docs.iter().filter(|d| d["kind"].as_str() == Some(kind)).collect();
    assert_eq!(found.len(), 1, "one {kind}");
    found[0]
}

fn str_of<'a>(yaml: &'a Yaml, what: &str) -> &'a str {
    yaml.as_str().unwrap_or_else(|| panic!("{what}: not a string: {yaml:?}"))
}

fn list<'a>(yaml: &'a Yaml, what: &str) -> &'a [Yaml] {
    yaml.as_vec().unwrap_or_else(|| panic!("{what}: not a list: {yaml:?}"))
}

/// A list of strings (a command).
fn strings(yaml: &Yaml, what: &str) -> Vec<String> {
    list(yaml, what).iter().map(|s| str_of(s, what).to_owned()).collect()
}

/// The container `name` of a pod spec (`containers` or `initContainers`).
fn container<'a>(pod: &'a Yaml, field: &str, name: &str) -> &'a Yaml {
    let found = list(&pod[field], field).iter().find(|c| c["name"].as_str() == Some(name));
    found.unwrap_or_else(|| panic!("no {field} {name:?}"))
}

/// Where `container` mounts `volume`.
fn mount_path<'a>(container: &'a Yaml, volume: &str) -> &'a str {
    let mounts = list(&container["volumeMounts"], "volumeMounts");
    let found = mounts.iter().find(|m| m["name"].as_str() == Some(volume));
    str_of(&found.unwrap_or_else(|| panic!("no mount of {volume}"))["mountPath"], "mountPath")
}

/// The container port called `name` (or the only one).
fn container_port(container: &Yaml) -> u16 {
    let ports = list(&container["ports"], "ports");
    assert_eq!(ports.len(), 1, "one port: {ports:?}");
    let port = ports[0]["containerPort"].as_i64().expect("containerPort");
    u16::try_from(port).expect("a port")
}

/// The parts of a manifest the kubelet acts on, and the config lameduck reads.
struct Pod {
    grace_period: Duration,
    spec: Yaml,
    config: toml::Table,
    config_text: String,
}

impl Pod {
    fn read(name: &str) -> Pod {
        let docs = manifest(name);
        let config_map = of_kind(&docs, "ConfigMap");
        let config_text = str_of(&config_map["data"]["proxy.toml"], "data.proxy.toml").to_owned();
        let config: toml::Table = config_text.parse().expect("the ConfigMap's proxy.toml is TOML");
        let deployment = of_kind(&docs, "Deployment");
        let spec = deployment["spec"]["template"]["spec"].clone();
        let seconds = spec["terminationGracePeriodSeconds"].as_i64().expect("terminationGracePeriodSeconds");
        // The ConfigMap is what the Deployment mounts as lameduck's config directory.
        let volume = list(&spec["volumes"], "volumes")
            .iter()
            .find(|v| v["configMap"]["name"].as_str() == config_map["metadata"]["name"].as_str())
            .expect("a volume of the ConfigMap");
        let volume = str_of(&volume["name"], "volume name").to_owned();
        let lameduck = list(&spec["containers"], "containers")
            .iter()
            .find(|c| {
                c["volumeMounts"]
                    .as_vec()
                    .is_some_and(|m| m.iter().any(|m| m["name"].as_str() == Some(&volume)))
            })
            .expect("a container mounting the config");
        assert_eq!(mount_path(lameduck, &volume), CONFIG_DIR);
        Pod {
            grace_period: Duration::from_secs(u64::try_from(seconds).expect("positive")),
            spec,
            config,
            config_text,
        }
    }

    fn drain(&self, key: &str) -> Duration {
        let text = self.config["drain"][key].as_str().unwrap_or_else(|| panic!("[drain] {key}"));
        humantime::parse_duration(text).unwrap_or_else(|e| panic!("[drain] {key} {text:?}: {e}"))
    }

    /// `[admin] addr`.
    fn admin(&self) -> SocketAddr {
        let addr = self.config["admin"]["addr"].as_str().expect("[admin] addr");
        addr.parse().expect("an IP:PORT")
    }

    /// The only upstream's only address.
    fn upstream(&self) -> (&toml::Table, SocketAddr) {
        let upstreams = self.config["upstream"].as_table().expect("[upstream.*]");
        assert_eq!(upstreams.len(), 1, "one upstream");
        let upstream = upstreams.values().next().and_then(toml::Value::as_table).expect("a table");
        let addrs = upstream["addrs"].as_array().expect("addrs");
        assert_eq!(addrs.len(), 1, "one address");
        (upstream, addrs[0].as_str().expect("a string").parse().expect("an IP:PORT"))
    }

    /// The first `[[listen]] addr`.
    fn listen(&self) -> SocketAddr {
        let listen = self.config["listen"].as_array().expect("[[listen]]");
        listen[0]["addr"].as_str().expect("addr").parse().expect("an IP:PORT")
    }
}

/// Every exec probe and the preStop hook of `container` must be `exec`: an httpGet (or
/// tcpSocket) probe or hook goes to the pod IP, where the loopback admin address is not.
fn assert_exec_only(container: &Yaml) {
    let name = container["name"].as_str().unwrap_or("?");
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        let p = &container[probe];
        if !p.is_badvalue() {
            assert!(
                p["httpGet"].is_badvalue() && p["tcpSocket"].is_badvalue(),
                "{name}: {probe} is not exec"
            );
            assert!(!p["exec"].is_badvalue(), "{name}: {probe} is exec");
        }
    }
    let hook = &container["lifecycle"]["preStop"];
    if !hook.is_badvalue() {
        assert!(hook["httpGet"].is_badvalue() && hook["sleep"].is_badvalue(), "{name}: preStop is exec");
    }
}

/// `[binary, "probe", …, url]` of an exec probe, and its URL.
fn probe_command(container: &Yaml, probe: &str) -> Vec<String> {
    let command = strings(&container[probe]["exec"]["command"], probe);
    assert_eq!(command.get(1).map(String::as_str), Some("probe"), "{probe}: {command:?}");
    command
}

/// `lameduck --check` on `config`: 0 and `ok`.
async fn assert_checks(config: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config).expect("write");
    let (status, out, err) =
        crate::deploy::run(&["--check", "--config", path.to_str().expect("utf-8")], PROMPT).await;
    assert_eq!((status, out.as_str()), (0, "ok\n"), "--check of the ConfigMap's proxy.toml: {err}");
}

/// The binary the init container copies into the shared volume, as the other containers see
/// it (`/lameduck/lameduck`).
fn copied_binary(pod: &Pod) -> String {
    let init = container(&pod.spec, "initContainers", "copy-lameduck");
    let command = strings(&init["command"], "copy-lameduck command");
    assert_eq!(command.len(), 3, "cp FROM TO: {command:?}");
    assert_eq!((command[0].as_str(), command[1].as_str()), ("cp", IMAGE_BINARY));
    let volume =
        list(&init["volumeMounts"], "volumeMounts")[0]["name"].as_str().expect("a volume").to_owned();
    let volumes = list(&pod.spec["volumes"], "volumes");
    let shared = volumes.iter().find(|v| v["name"].as_str() == Some(&volume)).expect("the volume");
    assert!(!shared["emptyDir"].is_badvalue(), "{volume} is an emptyDir");
    let dir = mount_path(init, &volume);
    assert!(command[2].starts_with(&format!("{dir}/")), "copied into {dir}: {command:?}");
    command[2].clone()
}

#[tokio::test]
async fn sidecar_manifest_sizes_the_grace_period_and_waits_for_the_drain() {
    let pod = Pod::read("sidecar.yaml");
    let (grace, deadline) = (pod.drain("grace"), pod.drain("deadline"));
    assert!(grace >= Duration::from_secs(3), "grace {grace:?} covers endpoint propagation");
    assert!(
        pod.grace_period > grace + deadline + MARGIN,
        "terminationGracePeriodSeconds {:?} > grace {grace:?} + deadline {deadline:?} + {MARGIN:?}",
        pod.grace_period
    );
    let admin = pod.admin();
    assert!(admin.ip().is_loopback(), "admin on loopback: {admin}");
    let copied = copied_binary(&pod);

    // The legacy container: its preStop hook waits for lameduck's admin address, within the
    // grace period; it runs the copied binary from its mount of the shared volume.
    let legacy = container(&pod.spec, "containers", "legacy");
    assert_exec_only(legacy);
    let hook = strings(&legacy["lifecycle"]["preStop"]["exec"]["command"], "preStop");
    assert_eq!(hook[0], copied, "the hook runs the copied binary");
    assert_eq!(mount_path(legacy, "lameduck-bin"), Path::new(&copied).parent().unwrap().to_str().unwrap());
    assert_eq!(hook[1], "wait-drained");
    let flag = |name: &str| hook.iter().position(|a| a == name).map(|i| hook[i + 1].clone());
    assert_eq!(flag("--admin").expect("--admin").parse::<SocketAddr>().expect("IP:PORT"), admin);
    let waits = humantime::parse_duration(&flag("--timeout").expect("--timeout")).expect("a duration");
    assert!(waits >= grace + deadline, "the hook waits out the whole drain: {waits:?}");
    assert!(waits < pod.grace_period, "the hook gives up before the kill: {waits:?}");
    assert_eq!(container_port(legacy), pod.upstream().1.port(), "the upstream is the legacy container");
    assert!(pod.upstream().1.ip().is_loopback(), "the same pod: loopback");

    // lameduck: no preStop (grace replaces a sleep), exec probes on its loopback admin address.
    let lameduck = container(&pod.spec, "containers", "lameduck");
    assert_exec_only(lameduck);
    assert!(lameduck["lifecycle"].is_badvalue(), "lameduck has no preStop hook");
    assert_eq!(
        strings(&lameduck["args"], "args")[..2],
        ["--config".to_string(), CONFIG_PATH.to_string()],
        "lameduck reads the mounted ConfigMap"
    );
    let ready = probe_command(lameduck, "readinessProbe");
    assert_eq!(
        (ready[0].as_str(), ready.last().unwrap().as_str()),
        (IMAGE_BINARY, &*format!("http://{admin}/readyz"))
    );
    let live = probe_command(lameduck, "livenessProbe");
    assert_eq!(live.last().unwrap(), &format!("http://{admin}/healthz"));
    assert_eq!(container_port(lameduck), pod.listen().port(), "the container port is the listener");

    assert_checks(&pod.config_text).await;
}

#[tokio::test]
async fn supervised_manifest_sizes_the_grace_period_for_the_backends_stop_too() {
    let pod = Pod::read("supervised.yaml");
    let (grace, deadline) = (pod.drain("grace"), pod.drain("deadline"));
    let (upstream, addr) = pod.upstream();
    let process = upstream["process"].as_table().expect("[upstream.NAME.process]");
    let stop = humantime::parse_duration(process["stop_timeout"].as_str().expect("stop_timeout"))
        .expect("a duration");
    assert!(
        pod.grace_period > grace + deadline + stop + MARGIN,
        "terminationGracePeriodSeconds {:?} > grace {grace:?} + deadline {deadline:?} + stop_timeout {stop:?} + {MARGIN:?}",
        pod.grace_period
    );
    assert!(addr.ip().is_loopback(), "the backend is reached in the container: {addr}");
    let admin = pod.admin();
    assert!(admin.ip().is_loopback(), "admin on loopback: {admin}");
    let copied = copied_binary(&pod);
    let containers = list(&pod.spec["containers"], "containers");
    assert_eq!(containers.len(), 1, "one container");
    let app = &containers[0];
    assert_exec_only(app);
    assert!(app["lifecycle"].is_badvalue(), "no preStop hook: lameduck (PID 1) gets SIGTERM at once");
    let command = strings(&app["command"], "command");
    assert_eq!(
        command[..3],
        [copied.clone(), "--config".into(), CONFIG_PATH.into()],
        "lameduck is the command"
    );
    let ready = probe_command(app, "readinessProbe");
    assert_eq!(
        (ready[0].as_str(), ready.last().unwrap().as_str()),
        (&*copied, &*format!("http://{admin}/readyz"))
    );
    let live = probe_command(app, "livenessProbe");
    assert_eq!(live.last().unwrap(), &format!("http://{admin}/healthz"));
    assert_eq!(container_port(app), pod.listen().port());
    assert_checks(&pod.config_text).await;
}

// ---- the pod-termination simulation ----

/// The legacy container: the demo backend as a process, its output read by tasks.
struct Legacy {
    child: Child,
    pid: i32,
    addr: SocketAddr,
    /// "slow request" lines printed so far.
    slow: watch::Receiver<usize>,
    /// When (wall clock) the test read its SIGTERM line, if it printed one.
    got_sigterm: watch::Receiver<Option<SystemTime>>,
}

impl Legacy {
    async fn start() -> Legacy {
        let mut child = Command::new(backend_binary())
            .arg("127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn legacy_backend");
        let pid = i32::try_from(child.id().expect("a pid")).expect("a pid");
        let (bound_tx, bound_rx) = oneshot::channel();
        let (slow_tx, slow) = watch::channel(0);
        let stdout = child.stdout.take().expect("piped");
        tokio::spawn(async move {
            let mut bound_tx = Some(bound_tx);
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.strip_prefix("legacy backend on http://") {
                    let addr = rest.split_whitespace().next().and_then(|a| a.parse::<SocketAddr>().ok());
                    if let (Some(addr), Some(tx)) = (addr, bound_tx.take()) {
                        let _ = tx.send(addr);
                    }
                } else if line.starts_with("slow request") {
                    slow_tx.send_modify(|n| *n += 1);
                }
            }
        });
        let (sigterm_tx, got_sigterm) = watch::channel(None);
        let stderr = child.stderr.take().expect("piped");
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with(GOT_SIGTERM) {
                    sigterm_tx.send_replace(Some(SystemTime::now()));
                }
            }
        });
        let addr = match timeout(PROMPT, bound_rx).await {
            Ok(Ok(addr)) => addr,
            _ => panic!("the legacy backend did not listen within {PROMPT:?}"),
        };
        Legacy { child, pid, addr, slow, got_sigterm }
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child, not reaped before the test's end.
        let rc = unsafe { libc::kill(self.pid, signal) };
        assert_eq!(rc, 0, "kill({}, {signal}): {}", self.pid, std::io::Error::last_os_error());
    }
}

/// The arguments of `command`, a lameduck command in the pod (`binary_in_pod` …), with the
/// manifest's address `from` mapped to the test's `to`; the test runs them with its binary.
fn mapped(command: &[String], binary_in_pod: &str, from: SocketAddr, to: SocketAddr) -> Vec<String> {
    assert_eq!(command[0], binary_in_pod, "{command:?}");
    command[1..].iter().map(|a| a.replace(&from.to_string(), &to.to_string())).collect()
}

/// The ConfigMap's config with only its addresses changed: listener and admin on free
/// loopback ports, the upstream at the legacy process.
fn test_config(pod: &Pod, legacy: SocketAddr) -> String {
    let mut config = pod.config.clone();
    let free = toml::Value::String("127.0.0.1:0".into());
    config["listen"].as_array_mut().expect("[[listen]]")[0]["addr"] = free.clone();
    config["admin"]["addr"] = free;
    let upstreams = config["upstream"].as_table_mut().expect("[upstream]");
    let name = upstreams.keys().next().expect("one upstream").clone();
    upstreams[&name]["addrs"] = toml::Value::Array(vec![toml::Value::String(legacy.to_string())]);
    toml::to_string(&config).expect("TOML")
}

/// Runs `lameduck args…` to its end within `within`: the status and its output.
async fn exec(args: &[String], within: Duration) -> (i32, String) {
    let mut command = Command::new(binary());
    command.args(args).stdin(Stdio::null()).kill_on_drop(true);
    let output = timeout(within, command.output()).await.expect("bounded").expect("run");
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code().expect("an exit code"), text)
}

/// The wall-clock `timestamp` of a JSON log line.
fn logged_at(line: &serde_json::Value) -> SystemTime {
    let text = line["timestamp"].as_str().unwrap_or_else(|| panic!("no timestamp: {line}"));
    humantime::parse_rfc3339(text).unwrap_or_else(|e| panic!("timestamp {text:?}: {e}"))
}

#[tokio::test]
async fn sidecar_pod_termination_drains_lameduck_before_the_legacy_app_gets_sigterm() {
    let pod = Pod::read("sidecar.yaml");
    let (grace, deadline) = (pod.drain("grace"), pod.drain("deadline"));
    let admin_in_pod = pod.admin();
    let legacy_spec = container(&pod.spec, "containers", "legacy");
    let lameduck_spec = container(&pod.spec, "containers", "lameduck");
    let hook = strings(&legacy_spec["lifecycle"]["preStop"]["exec"]["command"], "preStop");
    let copied = copied_binary(&pod);

    // Both containers up: the legacy app, then lameduck in front of it.
    let mut legacy = Legacy::start().await;
    let mut proxy = Lameduck::start(&test_config(&pod, legacy.addr)).await;
    let admin = proxy.admin_addr.expect("admin listening");
    let readiness =
        mapped(&probe_command(lameduck_spec, "readinessProbe"), IMAGE_BINARY, admin_in_pod, admin);
    assert_eq!(exec(&readiness, PROMPT).await.0, 0, "lameduck is ready");
    let legacy_ready =
        mapped(&probe_command(legacy_spec, "readinessProbe"), &copied, pod.upstream().1, legacy.addr);
    assert_eq!(exec(&legacy_ready, PROMPT).await.0, 0, "the legacy app is ready");

    // A 3 s request, truly in flight: the legacy app has it.
    let addr = proxy.addr;
    let slow = tokio::spawn(async move { raw_get(addr, "/slow?ms=3000").await });
    if !matches!(timeout(PROMPT, legacy.slow.wait_for(|&n| n >= 1)).await, Ok(Ok(_))) {
        panic!("the slow request did not reach the legacy app within {PROMPT:?}");
    }

    // The kubelet terminates the pod: for every container at once, its preStop hook, then
    // SIGTERM. lameduck has no hook: SIGTERM now. The legacy container: its hook first.
    let terminating = Instant::now();
    let kill_at = terminating + pod.grace_period;
    let hook_args = mapped(&hook, &copied, admin_in_pod, admin);
    let hook_run = Command::new(binary())
        .args(&hook_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run the preStop hook");
    proxy.sigterm();

    // Requests arriving during grace are served (by the legacy app, still alive), while
    // /readyz is 503 so endpoints drop the pod.
    proxy.wait_for_message("grace").await;
    for _ in 0..3 {
        let got = raw_get(proxy.addr, "/pid").await;
        assert_eq!(
            (got.status, got.body_text().trim()),
            (200, legacy.pid.to_string().as_str()),
            "during grace"
        );
    }
    let (status, said) = exec(&readiness, PROMPT).await;
    assert_eq!(status, 1, "the readiness probe fails during grace: {said}");
    assert!(said.contains("503"), "{said}");
    let drained = proxy.logs.lines().iter().any(|l| message(l) == "draining");
    assert!(!drained, "the requests above came during grace ({grace:?}), not after it");

    let response = timeout(PROMPT, slow).await.expect("the slow request ends").expect("join");
    assert_eq!((response.status, response.body_text().starts_with("slept 3000 ms")), (200, true));

    // The hook returns; only then does the legacy app get SIGTERM.
    let hook_out = match timeout_at(kill_at, hook_run.wait_with_output()).await {
        Ok(output) => output.expect("the hook's output"),
        Err(_) => panic!("the preStop hook still runs at terminationGracePeriodSeconds"),
    };
    let hook_took = terminating.elapsed();
    let hook_said =
        String::from_utf8_lossy(&hook_out.stdout).into_owned() + &String::from_utf8_lossy(&hook_out.stderr);
    assert_eq!(hook_out.status.code(), Some(0), "preStop hook: {hook_said}");
    let sigterm_sent = SystemTime::now();
    assert!(legacy.got_sigterm.borrow().is_none(), "the legacy app got SIGTERM from elsewhere");
    legacy.signal(libc::SIGTERM);

    // lameduck has exited cleanly, before the grace period; its exit line came before the
    // legacy app's SIGTERM.
    let remaining = kill_at.saturating_duration_since(Instant::now());
    assert_eq!(proxy.exit_within(remaining.min(PROMPT)).await, 0, "lameduck's exit status");
    let lameduck_exited = terminating.elapsed();
    assert!(lameduck_exited < pod.grace_period, "lameduck exited after {lameduck_exited:?}");
    let exit_line = proxy.summary().await;
    assert_eq!(exit_line["exit.status"], 0, "{exit_line}");
    assert!(
        logged_at(&exit_line) <= sigterm_sent,
        "lameduck logged its exit at {:?}, after the legacy app's SIGTERM at {sigterm_sent:?}",
        exit_line["timestamp"]
    );
    assert!(hook_took >= grace, "the hook returned after {hook_took:?}, before lameduck's grace ended");

    // The legacy app dies on its SIGTERM (its own way: no graceful shutdown), well before
    // the kubelet's SIGKILL.
    let mut got = legacy.got_sigterm.clone();
    let seen = timeout_at(kill_at, got.wait_for(Option::is_some)).await.map(|r| r.map(|at| *at));
    let legacy_status = timeout_at(kill_at, legacy.child.wait()).await;
    let (Ok(Ok(Some(got_sigterm))), Ok(legacy_status)) = (seen, legacy_status) else {
        legacy.signal(libc::SIGKILL);
        panic!("the legacy app still runs at terminationGracePeriodSeconds");
    };
    assert!(got_sigterm >= sigterm_sent, "the legacy app got SIGTERM before the hook returned");
    assert_eq!(legacy_status.expect("wait").code(), Some(143), "killed by its SIGTERM");

    eprintln!(
        "pod termination (grace period {:?}, [drain] grace {grace:?}, deadline {deadline:?}): \
         preStop hook returned after {hook_took:?} ({}), lameduck exited 0 by {lameduck_exited:?}, \
         the legacy app got SIGTERM after that",
        pod.grace_period,
        hook_said.trim()
    );
}
