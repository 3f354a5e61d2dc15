//! `sd_notify`: READY=1 only once the port accepts, STATUS= kept current, STOPPING=1 and the
//! draining status (with EXTEND_TIMEOUT_USEC re-sent as connections close) on SIGTERM, the
//! watchdog, and what a reload tells systemd (RELOADING=1, then MAINPID= and READY=1 from the
//! new process).

use http::Response;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use super::peer::{wait_exited, Notified, NotifySocket, Successors};
use super::{config_on, exits, free_addr, pid_field, reload, send_signal, RELOAD_WITHIN};
use crate::harness::*;

/// `"2 connections"` -> 2, `"1 connection"` -> 1: the noun in the singular for one, else in
/// the plural (`None` when the number does not match the noun's form).
fn parse_count(text: &str, noun: &str) -> Option<u64> {
    let (n, word) = text.split_once(' ')?;
    let n: u64 = n.parse().ok()?;
    let expected = if n == 1 { noun.to_owned() } else { format!("{noun}s") };
    (word == expected).then_some(n)
}

/// `"draining: 2 connections, 0 tunnels, 29.9s left"` -> (2, 0, 29.9).
fn parse_draining(status: &str) -> Option<(u64, u64, f64)> {
    let rest = status.strip_prefix("draining: ")?;
    let mut parts = rest.split(", ");
    let conns = parse_count(parts.next()?, "connection")?;
    let tunnels = parse_count(parts.next()?, "tunnel")?;
    let left = parts.next()?.strip_suffix("s left")?.parse().ok()?;
    Some((conns, tunnels, left))
}

/// The serving status line for `n` open connections.
fn serving_line(n: usize) -> String {
    match n {
        1 => "serving: 1 connection".to_owned(),
        n => format!("serving: {n} connections"),
    }
}

fn draining_status(m: &Notified) -> Option<(u64, u64, f64)> {
    m.value("STATUS").and_then(parse_draining)
}

/// CLOCK_MONOTONIC in microseconds, as `MONOTONIC_USEC=` counts it.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the timespec it is given.
    assert_eq!(unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) }, 0);
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

#[tokio::test]
async fn notify_ready_after_the_port_accepts_status_current_stopping_and_draining_status() {
    // Two requests held at the backend (one per gate) keep two connections open into the drain.
    let (release_a, held_a) = gate();
    let (release_b, held_b) = gate();
    let backend = Backend::start(move |req| {
        let held = if req.uri().path() == "/a" { held_a.clone() } else { held_b.clone() };
        async move {
            held.wait().await;
            Response::new(full("done"))
        }
    })
    .await;
    let listen = free_addr();
    let notify = NotifySocket::bind();
    let starting = Lameduck::spawn(&config_on(listen, backend.addr, DRAIN_30S), |c| notify.pass_to(c));
    let pid = starting.pid();

    let Some((ready_at, ready)) = notify.try_wait_for(0, |m| m.has("READY=1"), secs(15)).await else {
        panic!("no READY=1 within 15s; got:\n{}", notify.dump());
    };
    // The moment READY=1 is in, the port must accept: connect at once, nothing in between.
    let first = timeout(PROMPT, TcpStream::connect(listen)).await;
    let first = match first {
        Ok(Ok(stream)) => stream,
        other => panic!("connect to {listen} right after READY=1: {other:?}"),
    };
    assert_eq!(ready.pid, Some(pid), "READY=1 comes from lameduck itself: {ready:?}");
    assert_eq!(ready.value("STATUS"), Some("serving: 0 connections"), "{ready:?}");
    assert_eq!(ready.value("MAINPID"), None, "a process systemd started itself sends no MAINPID");
    let stored = notify.messages().iter().position(|m| m.has("FDSTORE=1"));
    assert!(
        stored.is_some_and(|i| i < ready_at),
        "the bound socket is parked before READY=1:\n{}",
        notify.dump()
    );
    let mut proxy = starting.ready().await;

    // STATUS= follows the connection count (refreshed about once a second).
    let serving = |n: usize| move |m: &Notified| m.value("STATUS") == Some(&serving_line(n));
    let (at_one, _) = notify.wait_for(ready_at + 1, "STATUS=serving: 1 connection", serving(1)).await;
    let second = H1Client::connect(proxy.addr).await;
    notify.wait_for(at_one + 1, "STATUS=serving: 2 connections", serving(2)).await;

    let mut first = RawConn::from(first);
    first.send(b"GET /a HTTP/1.1\r\nHost: lameduck\r\n\r\n").await;
    let req = second.request("GET", "/b", empty());
    let second = second.spawn_fetch(req, secs(20));
    backend.arrived().await;
    backend.arrived().await;

    let before_term = notify.mark();
    proxy.sigterm();
    let (stopping_at, stopping) = notify.wait_for(before_term, "STOPPING=1", |m| m.has("STOPPING=1")).await;
    assert_eq!(stopping.pid, Some(pid));
    let (_, draining) =
        notify.wait_for(stopping_at, "STATUS=draining: …", |m| draining_status(m).is_some()).await;
    let (conns, tunnels, left) = draining_status(&draining).unwrap();
    assert_eq!((conns, tunnels), (2, 0), "{draining:?}");
    assert!(left > 20.0 && left <= 30.0, "seconds left of a 30 s deadline: {draining:?}");
    let extend = |m: &Notified| m.value("EXTEND_TIMEOUT_USEC").is_some();
    let (_, extended) = notify.wait_for(stopping_at, "EXTEND_TIMEOUT_USEC=", extend).await;
    let usec: u64 = extended.value("EXTEND_TIMEOUT_USEC").unwrap().parse().expect("a number");
    assert!(usec > 0 && usec <= 31_000_000, "extension bounded by the deadline: {extended:?}");

    // One connection closes: the status follows, and the stop timeout is pushed out again.
    let progress = notify.mark();
    release_a.open();
    let answer = first.read_response().await;
    assert_eq!((answer.status, answer.body_text().as_str()), (200, "done"));
    assert!(answer.closes(), "in-flight HTTP/1.1 response during the drain closes: {answer:?}");
    drop(first);
    let one_left = |m: &Notified| draining_status(m).is_some_and(|(conns, _, _)| conns == 1);
    notify.wait_for(progress, "STATUS=draining: 1 connection, …", one_left).await;
    notify.wait_for(progress, "EXTEND_TIMEOUT_USEC= again as the drain progresses", extend).await;

    release_b.open();
    let second = second.await.unwrap().expect("the other in-flight request completes");
    assert_eq!(second.text(), "done");
    assert_eq!(proxy.exit_within(PROMPT).await, 0);
    let messages = notify.messages();
    assert!(messages.iter().all(|m| m.pid == Some(pid)), "only lameduck sends:\n{}", notify.dump());
    assert!(messages.iter().all(|m| !m.truncated), "{}", notify.dump());
    assert_eq!(messages.iter().filter(|m| m.has("READY=1")).count(), 1, "{}", notify.dump());
}

#[tokio::test]
async fn notify_watchdog_pings_at_half_of_watchdog_usec() {
    let backend = Backend::named("ok").await;
    let notify = NotifySocket::bind();
    let starting = Lameduck::spawn(&config_for(backend.addr), |c| {
        notify.pass_to(c);
        c.env("WATCHDOG_USEC", "200000");
    });
    let pid = starting.pid();
    let Some((ready_at, _)) = notify.try_wait_for(0, |m| m.has("READY=1"), secs(15)).await else {
        panic!("no READY=1 within 15s; got:\n{}", notify.dump());
    };
    let since_ready = Instant::now();
    let watchdog = |m: &Notified| m.has("WATCHDOG=1");
    let Some((first, _)) = notify.try_wait_for(ready_at, watchdog, secs(1)).await else {
        panic!("no WATCHDOG=1 within 1 s of READY=1:\n{}", notify.dump());
    };
    let within = secs(1).saturating_sub(since_ready.elapsed());
    let Some((_, ping)) = notify.try_wait_for(first + 1, watchdog, within).await else {
        panic!("fewer than 2 WATCHDOG=1 within 1 s of READY=1 (WATCHDOG_USEC=200000):\n{}", notify.dump());
    };
    assert_eq!(ping.pid, Some(pid));
    let _proxy = starting.ready().await;
}

#[tokio::test]
async fn notify_watchdog_is_off_when_watchdog_pid_names_another_process() {
    let backend = Backend::named("ok").await;
    let notify = NotifySocket::bind();
    let starting = Lameduck::spawn(&config_for(backend.addr), |c| {
        notify.pass_to(c);
        c.env("WATCHDOG_USEC", "200000").env("WATCHDOG_PID", "1");
    });
    let Some((ready_at, _)) = notify.try_wait_for(0, |m| m.has("READY=1"), secs(15)).await else {
        panic!("no READY=1 within 15s; got:\n{}", notify.dump());
    };
    let proxy = starting.ready().await;
    // The status reporter's first line comes at once, the next a second later: by then a
    // watchdog at 100 ms would have pinged about ten times.
    let serving = |n: usize| move |m: &Notified| m.value("STATUS") == Some(&serving_line(n));
    let (first_status, _) = notify.wait_for(ready_at + 1, "the first status line", serving(0)).await;
    let _conn = RawConn::connect(proxy.addr).await;
    notify.wait_for(first_status + 1, "STATUS=serving: 1 connection", serving(1)).await;
    let pings = notify.messages().iter().filter(|m| m.has("WATCHDOG=1")).count();
    assert_eq!(pings, 0, "WATCHDOG_PID=1 is not lameduck:\n{}", notify.dump());
}

#[tokio::test]
async fn notify_reload_sends_reloading_then_mainpid_and_ready_from_the_new_process() {
    let backend = Backend::named("ok").await;
    let notify = NotifySocket::bind();
    let mut proxy = Lameduck::start_with(&config_for(backend.addr), |c| notify.pass_to(c)).await;
    let successors = Successors::of(proxy.pid(), &proxy.logs);
    let old = proxy.pid();
    let (ready_at, _) = notify.wait_for(0, "READY=1", |m| m.has("READY=1")).await;

    let clock_before = monotonic_usec();
    let successor = reload(&proxy.logs, old).await;
    let (reloading_at, reloading) = notify.wait_for(ready_at, "RELOADING=1", |m| m.has("RELOADING=1")).await;
    assert_eq!(reloading.pid, Some(old), "{reloading:?}");
    let stamp: u64 =
        reloading.value("MONOTONIC_USEC").expect("MONOTONIC_USEC= with RELOADING=1").parse().unwrap();
    assert!(
        (clock_before..=monotonic_usec()).contains(&stamp),
        "MONOTONIC_USEC={stamp} is CLOCK_MONOTONIC at the reload (test saw {clock_before} before SIGUSR2)"
    );
    let mainpid = successor.to_string();
    let (new_ready_at, new_ready) = notify
        .wait_for(reloading_at, "MAINPID= with READY=1", |m| m.value("MAINPID") == Some(mainpid.as_str()))
        .await;
    assert!(new_ready.has("READY=1"), "{new_ready:?}");
    assert_eq!(new_ready.pid, Some(successor), "the new process reports for itself: {new_ready:?}");

    // The old process drains quietly (it is no longer the main process) and exits 0.
    assert_eq!(proxy.exit_within(PROMPT).await, 0);
    let from_old: Vec<Notified> =
        notify.messages().into_iter().skip(new_ready_at).filter(|m| m.pid == Some(old)).collect();
    assert!(from_old.is_empty(), "the old process spoke after the handover: {from_old:?}");
    let stopping = notify.messages().iter().filter(|m| m.has("STOPPING=1")).count();
    assert_eq!(stopping, 0, "a reload does not stop the service:\n{}", notify.dump());

    // The new process is systemd's main process now: it serves, and stops on SIGTERM.
    assert_eq!(raw_get(proxy.addr, "/").await.body_text(), "ok");
    let before_term = notify.mark();
    send_signal(successor, libc::SIGTERM);
    let (_, stopping) = notify.wait_for(before_term, "STOPPING=1", |m| m.has("STOPPING=1")).await;
    assert_eq!(stopping.pid, Some(successor));
    let exits = exits(&proxy.logs, 2, RELOAD_WITHIN).await;
    for exit in &exits {
        assert_eq!(pid_field(exit, "exit.status"), 0, "{exit}");
    }
    assert!(wait_exited(successor, PROMPT).await, "the new process is still running after its exit line");
    drop(successors);
}

#[tokio::test]
async fn notify_status_never_says_serving_after_stopping_and_names_one_connection_in_the_singular() {
    // A request held at the backend keeps the drain going; an idle connection closed right
    // after STOPPING=1 changes the count while the serving reporter may have a tick due.
    let (release, held) = gate();
    let backend = Backend::start(move |_req| {
        let held = held.clone();
        async move {
            held.wait().await;
            Response::new(full("done"))
        }
    })
    .await;
    let notify = NotifySocket::bind();
    let mut proxy = Lameduck::start_with(&config_for(backend.addr), |c| notify.pass_to(c)).await;
    let (ready_at, _) = notify.wait_for(0, "READY=1", |m| m.has("READY=1")).await;
    let status_is = |line: String| move |m: &Notified| m.value("STATUS") == Some(line.as_str());

    let client = H1Client::connect(proxy.addr).await;
    let (one_at, _) =
        notify.wait_for(ready_at, "STATUS=serving: 1 connection", status_is(serving_line(1))).await;
    let request = client.request("GET", "/", empty());
    let in_flight = client.spawn_fetch(request, secs(20));
    backend.arrived().await;
    let idle = RawConn::connect(proxy.addr).await;
    notify.wait_for(one_at, "STATUS=serving: 2 connections", status_is(serving_line(2))).await;

    let before_term = notify.mark();
    proxy.sigterm();
    let (stopping_at, stopping) = notify.wait_for(before_term, "STOPPING=1", |m| m.has("STOPPING=1")).await;
    assert_eq!(
        stopping.value("STATUS"),
        Some("draining: 2 connections, 0 tunnels, 30.0s left"),
        "STOPPING=1 replaces the serving line at once: {stopping:?}"
    );
    drop(idle);
    // The drain reporter sends its first line at once and the next a second later: by then
    // any tick the serving reporter had due when the drain began (they too are a second
    // apart) has come and gone.
    let one_left = |m: &Notified| draining_status(m).is_some_and(|(conns, _, _)| conns == 1);
    let (first, _) = notify.wait_for(stopping_at + 1, "STATUS=draining: 1 connection, …", one_left).await;
    notify.wait_for(first + 1, "a second STATUS=draining: 1 connection, …", one_left).await;

    release.open();
    assert_eq!(in_flight.await.unwrap().expect("the held request completes").text(), "done");
    assert_eq!(proxy.exit_within(PROMPT).await, 0);
    let messages = notify.messages();
    let after_stopping: Vec<&str> =
        messages[stopping_at..].iter().filter_map(|m| m.value("STATUS")).collect();
    assert!(
        after_stopping.iter().all(|status| !status.starts_with("serving")),
        "a serving line after STOPPING=1:\n{}",
        notify.dump()
    );
    // Every one a draining line whose counts agree with their nouns in number.
    assert!(after_stopping.iter().all(|status| parse_draining(status).is_some()), "{}", notify.dump());
}
