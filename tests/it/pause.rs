//! Backend deploys under load: pause, kill, restart, resume (real backend processes).
//!
//! Every test here runs the demo backend (`examples/legacy_backend.rs`) as real processes
//! ([`BackendProcess`]) behind the real daemon, keeps it under load ([`Load`]: client tasks
//! looping GETs of `/pid` and POSTs to `/echo`, each echo checked byte for byte), and does to
//! the backend what a deploy does: SIGKILL, then a new process on the same port — around a
//! pause, with `connect_retry`, with neither, and one address of two at a time. Every
//! exchange is recorded (when it started, which backend process answered — every answer
//! carries `x-backend-pid` — or what went wrong), and the assertions read that record by when
//! each request started relative to the deploy's steps. Each test prints its counts.
//!
//! Waits are events: the backend's first stdout line (its port accepts), its "slow request"
//! line (it has the request), the admin API's answers and state, the load's progress; each is
//! bounded. The backend process, the load and the admin helpers live in the harness
//! (`harness/demo.rs`), shared with the tests of supervised backends (`backend.rs`).

use std::net::SocketAddr;

use serde_json::Value;
use tokio::time::{timeout, Instant};

use crate::harness::{
    admin, config, empty, ms, num, poll, spawn_requests, upstream_where, Answer, BackendProcess, Exchange,
    H1Client, Lameduck, Load, Tally, CLIENTS, DRAIN_30S, PROMPT, REQUEST_BOUND,
};

/// One listener, upstream `app` over `addrs` (plus `upstream_extra`), and the admin API.
fn deploy_config(addrs: &[SocketAddr], upstream_extra: &str) -> String {
    config(addrs, upstream_extra, &format!("{DRAIN_30S}\n[admin]\naddr = \"127.0.0.1:0\"\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_requests_while_the_backend_restarts_under_load() {
    const SLOW: usize = 3;
    const SLOW_MS: u64 = 800;
    let mut old = BackendProcess::start().await;
    let proxy = Lameduck::start(&deploy_config(&[old.addr], "")).await;
    let load = Load::start(proxy.addr);
    load.run_for(100).await;

    // Slow requests in flight (the backend has them) when the pause comes.
    let slow_sent = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        let client = H1Client::connect(proxy.addr).await;
        let req = client.request("GET", &format!("/slow?ms={SLOW_MS}"), empty());
        slow.push(client.spawn_fetch(req, PROMPT));
    }
    old.wait_slow_arrived(SLOW).await;

    let pause_called = Instant::now();
    let (status, paused) = admin(&proxy, "POST", "/upstreams/app/pause").await;
    let pause_answered = Instant::now();
    assert_eq!(status, 200, "pause: {paused}");
    assert_eq!((&paused["paused"], &paused["in_flight"]), (&Value::from(true), &Value::from(0)), "{paused}");
    // The answer waited for the slow requests: it cannot have come before they could end.
    let since_slow = pause_answered - slow_sent;
    assert!(since_slow >= ms(SLOW_MS), "pause answered {since_slow:?} after {SLOW_MS} ms requests were sent");
    let waited = num(&paused["waited_ms"]);
    let must_wait = (slow_sent + ms(SLOW_MS)).saturating_duration_since(pause_called).as_millis() as u64;
    let round_trip = (pause_answered - pause_called).as_millis() as u64;
    assert!(
        waited + 200 >= must_wait && waited <= round_trip,
        "waited_ms {waited}: the slow requests had {must_wait} ms to go, the call took {round_trip} ms"
    );
    for slow in slow {
        let fetched = slow.await.expect("slow request task").expect("slow request answered whole");
        assert_eq!(fetched.status, 200, "{}", fetched.text());
        assert_eq!(fetched.header("x-backend-pid"), Some(old.pid.to_string().as_str()));
    }

    old.kill().await;
    // Every load client is now waiting on a held request.
    let during =
        upstream_where(&proxy, "app", "every load client held", |app| num(&app["held"]) >= CLIENTS as u64)
            .await;
    assert_eq!(
        (&during["state"], &during["addrs"][0]["state"]),
        (&"paused".into(), &"paused".into()),
        "{during}"
    );
    let new = BackendProcess::start_on(old.addr).await;
    let resume_called = Instant::now();
    let (status, resumed) = admin(&proxy, "POST", "/upstreams/app/resume").await;
    assert_eq!(status, 200, "resume: {resumed}");
    assert_eq!(resumed["paused"], false, "{resumed}");
    load.run_for(100).await;
    let exchanges = load.stop().await;

    let tally = Tally { exchanges: &exchanges };
    // Sent while paused: started after the pause call and before the resume. The old backend
    // may have answered those that slipped in before the pause took effect (the call waited
    // for them). Held: sent before the resume, answered by the new backend — they waited.
    let paused_window =
        || exchanges.iter().filter(|e| e.started >= pause_called && e.started < resume_called);
    let sent_while_paused = paused_window().count();
    let held: Vec<&Exchange> = exchanges
        .iter()
        .filter(|e| e.started < resume_called && e.answer == Answer::Ok { pid: new.pid })
        .collect();
    let longest_held = held.iter().map(|e| e.took).max();
    let report = format!(
        "{}; sent while paused {sent_while_paused}, held (answered by the new backend) {}, longest held \
         {longest_held:?}, held seen in GET /upstreams {}, pause waited_ms {waited}, old pid {}, new pid {}",
        tally.line(),
        held.len(),
        during["held"],
        old.pid,
        new.pid
    );
    eprintln!("pause_holds_requests_while_the_backend_restarts_under_load: {report}");
    assert!(tally.failures().is_empty(), "{report}");
    // Each client had one request held when GET /upstreams showed them all held.
    assert!(held.len() >= CLIENTS, "{report}");
    let late_old: Vec<_> = paused_window()
        .filter(|e| e.answer == Answer::Ok { pid: old.pid } && e.started >= pause_answered)
        .collect();
    assert!(late_old.is_empty(), "sent after the pause answered, answered by the old backend: {late_old:?}");
    let after: Vec<_> = exchanges.iter().filter(|e| e.started >= pause_answered).collect();
    let wrong: Vec<_> = after.iter().filter(|e| e.answer != Answer::Ok { pid: new.pid }).collect();
    assert!(
        wrong.is_empty(),
        "sent after the pause answered, not answered by the new backend: {wrong:?}; {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_retry_rides_out_a_backend_restart_without_a_pause() {
    const LATE: usize = 4;
    let mut old = BackendProcess::start().await;
    let proxy = Lameduck::start(&deploy_config(&[old.addr], "connect_retry = \"5s\"")).await;
    let load = Load::start(proxy.addr);
    load.run_for(100).await;

    let kill_sent = Instant::now();
    old.kill().await;
    let killed = Instant::now();
    // Requests that surely arrive after the kill (most load clients are held by now, so they
    // send their next request only after the restart); GETs and a POST, two of each kind.
    let late = spawn_requests(proxy.addr, LATE);
    // The proxy finds the port refusing and keeps every request retrying; the backend stays
    // down until its connect errors span half a second.
    let first = upstream_where(&proxy, "app", "a connect error", |app| {
        !app["addrs"][0]["last_connect_error"].is_null() && num(&app["held"]) > 0
    })
    .await;
    let first_error = &first["addrs"][0]["last_connect_error"];
    assert!(first_error["error"].as_str().is_some_and(|e| e.contains("refused")), "{first}");
    let first_at = num(&first_error["at_unix_ms"]);
    let down = upstream_where(&proxy, "app", "every request held, retrying for 500 ms", |app| {
        num(&app["held"]) >= (CLIENTS + LATE) as u64
            && num(&app["addrs"][0]["last_connect_error"]["at_unix_ms"]) >= first_at + 500
    })
    .await;
    let restarting = Instant::now();
    let new = BackendProcess::start_on(old.addr).await;
    let downtime = killed.elapsed();
    let mut late_exchanges = Vec::new();
    for request in late {
        late_exchanges
            .push(timeout(REQUEST_BOUND + PROMPT, request).await.expect("in time").expect("request"));
    }
    load.run_for(100).await;
    let mut exchanges = load.stop().await;
    exchanges.extend(late_exchanges);
    exchanges.sort_by_key(|e| e.started);

    let tally = Tally { exchanges: &exchanges };
    let after_kill: Vec<&Exchange> = exchanges.iter().filter(|e| e.started >= killed).collect();
    let in_flight_at_kill =
        exchanges.iter().filter(|e| e.started < killed && e.started + e.took >= kill_sent);
    let failed_at_kill = in_flight_at_kill.filter(|e| !matches!(e.answer, Answer::Ok { .. })).count();
    // Held across the restart: sent after the kill and before the new backend started (so
    // answered only once it ran).
    let held: Vec<_> = after_kill.iter().filter(|e| e.started < restarting).collect();
    let longest = held.iter().map(|e| e.took).max();
    let report = format!(
        "{}; sent after the kill {}, held across the restart {}, longest held {longest:?}, failed of those in \
         flight at the kill {failed_at_kill}, backend down {downtime:?}, held seen in GET /upstreams {}",
        tally.line(),
        after_kill.len(),
        held.len(),
        down["held"],
    );
    eprintln!("connect_retry_rides_out_a_backend_restart_without_a_pause: {report}");
    let wrong: Vec<_> = after_kill.iter().filter(|e| e.answer != Answer::Ok { pid: new.pid }).collect();
    assert!(wrong.is_empty(), "sent after the kill, not answered by the new backend: {wrong:?}; {report}");
    assert!(held.len() >= LATE, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_connect_retry_requests_get_502_while_the_backend_is_down() {
    let mut old = BackendProcess::start().await;
    let proxy = Lameduck::start(&deploy_config(&[old.addr], "")).await;
    let load = Load::start(proxy.addr);
    load.run_for(100).await;

    old.kill().await;
    let killed = Instant::now();
    load.wait_until("20 answers 502", |p| p.bad_gateway >= 20).await;
    let new = BackendProcess::start_on(old.addr).await;
    let restarted = Instant::now();
    load.run_for(100).await;
    let exchanges = load.stop().await;

    let tally = Tally { exchanges: &exchanges };
    let down: Vec<&Exchange> =
        exchanges.iter().filter(|e| e.started >= killed && e.started < restarted).collect();
    let bad_gateway: Vec<&&Exchange> = down.iter().filter(|e| e.answer == Answer::Status(502)).collect();
    let slowest_502 = bad_gateway.iter().map(|e| e.took).max();
    let report = format!(
        "{}; sent while down {}, 502 of those {}, slowest 502 {slowest_502:?}",
        tally.line(),
        down.len(),
        bad_gateway.len(),
    );
    eprintln!("without_connect_retry_requests_get_502_while_the_backend_is_down: {report}");
    assert!(!bad_gateway.is_empty(), "{report}");
    // Refused at once, not retried: a 502 comes as fast as a round trip.
    assert!(slowest_502.is_some_and(|t| t < ms(1000)), "{report}");
    let other: Vec<_> =
        down.iter().filter(|e| !matches!(e.answer, Answer::Ok { .. } | Answer::Status(502))).collect();
    assert!(other.is_empty(), "sent while down, neither 2xx nor 502: {other:?}; {report}");
    let after: Vec<_> = exchanges.iter().filter(|e| e.started >= restarted).collect();
    assert!(!after.is_empty(), "{report}");
    let wrong: Vec<_> = after.iter().filter(|e| e.answer != Answer::Ok { pid: new.pid }).collect();
    assert!(wrong.is_empty(), "sent after the restart, not answered by the new backend: {wrong:?}; {report}");
}

/// When one address of a two-address upstream was out of rotation.
#[derive(Debug)]
struct AddrDeploy {
    /// When the pause call answered.
    paused: Instant,
    /// When the resume call was sent.
    resumed: Instant,
    /// Load requests completed while it was paused.
    served_meanwhile: usize,
}

/// Pauses `backend`'s address under load, checks it receives nothing, restarts it and
/// resumes it, then waits until the new process has its share again.
async fn deploy_one_address(proxy: &Lameduck, load: &Load, backend: &mut BackendProcess) -> AddrDeploy {
    let addr = backend.addr;
    let done_before = load.done();
    let (status, body) = admin(proxy, "POST", &format!("/upstreams/app/pause?addr={addr}")).await;
    let paused = Instant::now();
    assert_eq!(status, 200, "pause {addr}: {body}");
    assert_eq!(body["addr"], addr.to_string(), "{body}");
    assert_eq!((&body["paused"], &body["in_flight"]), (&Value::from(true), &Value::from(0)), "{body}");
    let count = backend.count().await;
    load.run_for(100).await;
    assert_eq!(backend.count().await, count, "the paused backend {addr} received requests");

    backend.kill().await;
    load.run_for(50).await; // the other address serves everything meanwhile
    *backend = BackendProcess::start_on(addr).await;
    let resumed = Instant::now();
    let (status, body) = admin(proxy, "POST", &format!("/upstreams/app/resume?addr={addr}")).await;
    assert_eq!(status, 200, "resume {addr}: {body}");
    assert_eq!(body["paused"], false, "{body}");
    let served_meanwhile = load.done() - done_before;
    poll(&proxy.logs, "the resumed backend back in rotation", || async {
        (backend.count().await >= 20).then_some(())
    })
    .await;
    AddrDeploy { paused, resumed, served_meanwhile }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_one_address_moves_its_traffic_to_the_other_while_it_restarts() {
    let mut first = BackendProcess::start().await;
    let mut second = BackendProcess::start().await;
    let proxy = Lameduck::start(&deploy_config(&[first.addr, second.addr], "")).await;
    let load = Load::start(proxy.addr);
    load.run_for(100).await;
    let (first_pid, second_pid) = (first.pid, second.pid);

    let first_deploy = deploy_one_address(&proxy, &load, &mut first).await;
    let second_deploy = deploy_one_address(&proxy, &load, &mut second).await;
    load.run_for(100).await;
    let exchanges = load.stop().await;

    let tally = Tally { exchanges: &exchanges };
    let answered_by = |pid: u32| exchanges.iter().filter(|e| e.answer == Answer::Ok { pid }).count();
    let report = format!(
        "{}; answered by first {} then {}, second {} then {}; served while first paused {}, while second paused {}",
        tally.line(),
        answered_by(first_pid),
        answered_by(first.pid),
        answered_by(second_pid),
        answered_by(second.pid),
        first_deploy.served_meanwhile,
        second_deploy.served_meanwhile,
    );
    eprintln!("pausing_one_address_moves_its_traffic_to_the_other_while_it_restarts: {report}");
    assert!(tally.failures().is_empty(), "{report}");
    // While an address was paused, only the other one answered: requests sent after the pause
    // answered and done before the resume was sent.
    for (deploy, other_pid) in [(&first_deploy, second_pid), (&second_deploy, first.pid)] {
        let window: Vec<&Exchange> = exchanges
            .iter()
            .filter(|e| e.started >= deploy.paused && e.started + e.took < deploy.resumed)
            .collect();
        assert!(!window.is_empty(), "{deploy:?}: no request while paused; {report}");
        let wrong: Vec<_> = window.iter().filter(|e| e.answer != Answer::Ok { pid: other_pid }).collect();
        assert!(wrong.is_empty(), "{deploy:?}: answered by the paused address: {wrong:?}; {report}");
    }
    for pid in [first_pid, first.pid, second_pid, second.pid] {
        assert!(answered_by(pid) > 0, "backend process {pid} answered nothing; {report}");
    }
}
