//! Listening sockets from systemd: socket activation (`LISTEN_FDS`, the test binds the socket
//! and passes it as fd 3) and the fd store (`FDSTORE=1` at start; the parked socket survives a
//! crash, keeps queueing connections, and is taken back by the next start).

use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::time::timeout;

use super::peer::{inherit_fds, inode_of, listening_inodes, socket_info, Notified, NotifySocket};
use super::{config_on, expect_log, free_addr, lines_with};
use crate::harness::*;

fn bind_local() -> StdListener {
    StdListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

/// The fd store name lameduck gives the listener on `addr`.
fn store_name(addr: SocketAddr) -> String {
    format!("lameduck-listen-{}", addr.to_string().replace(':', "_"))
}

/// The `source` of the `listening` line for `addr`.
fn source_of(logs: &Logs, addr: SocketAddr) -> String {
    let line = lines_with(logs, "listening")
        .into_iter()
        .find(|l| field_str(l, "listener.addr") == Some(addr.to_string()))
        .unwrap_or_else(|| panic!("no listening line for {addr}; log:\n{}", logs.dump()));
    field_str(&line, "source").unwrap_or_default()
}

/// The `error` of the `start-up failed` line (the process may have exited before the test
/// has read its last lines).
async fn startup_error(logs: &Logs) -> String {
    let line = expect_log(logs, 0, "start-up failed", |l| message(l) == "start-up failed", PROMPT).await;
    field_str(&line, "error").unwrap_or_default()
}

#[tokio::test]
async fn socket_activation_serves_on_the_inherited_socket_and_binds_nothing() {
    let backend = Backend::named("activated").await;
    let socket = bind_local();
    let addr = socket.local_addr().unwrap();
    let starting = Lameduck::spawn_with_listen_pid(&config_on(addr, backend.addr, DRAIN_30S), |c| {
        c.env("LISTEN_FDS", "1").env("LISTEN_FDNAMES", "lameduck.socket");
        inherit_fds(c, vec![socket.as_raw_fd()]);
    });
    let mut proxy = starting.ready().await;
    assert_eq!(proxy.addrs, vec![addr]);
    assert_eq!(source_of(&proxy.logs, addr), "socket-activation");
    let answer = raw_get(addr, "/").await;
    assert_eq!((answer.status, answer.body_text().as_str()), (200, "activated"));
    assert_eq!(
        listening_inodes(proxy.pid()),
        vec![inode_of(&socket)],
        "lameduck listens on the socket it was given and on nothing else"
    );

    // After lameduck is gone the socket is still systemd's (here: the test's): a new client
    // waits in its backlog for the next instance instead of being refused.
    proxy.sigterm();
    assert_eq!(proxy.exit_within(PROMPT).await, 0);
    let waiting = timeout(PROMPT, TcpStream::connect(addr)).await;
    assert!(matches!(waiting, Ok(Ok(_))), "connect after lameduck exited: {waiting:?}");
    socket.set_nonblocking(true).unwrap();
    assert!(socket.accept().is_ok(), "the client waits in the inherited socket's backlog");
}

#[tokio::test]
async fn socket_activation_of_a_socket_no_listen_entry_names_fails_naming_both_addresses() {
    let socket = bind_local();
    let passed = socket.local_addr().unwrap();
    let configured = DeadPort::new().addr;
    let config = config_on(configured, DeadPort::new().addr, DRAIN_30S);
    let mut starting = Lameduck::spawn_with_listen_pid(&config, |c| {
        c.env("LISTEN_FDS", "1").env("LISTEN_FDNAMES", "lameduck.socket");
        inherit_fds(c, vec![socket.as_raw_fd()]);
    });
    assert_eq!(starting.exit_within(secs(15)).await, 1, "a start-up error");
    let error = startup_error(&starting.logs).await;
    for needle in [passed.to_string(), configured.to_string(), "lameduck.socket".to_owned()] {
        assert!(error.contains(&needle), "the error names {needle}: {error}");
    }
    assert!(lines_with(&starting.logs, "listening").is_empty(), "nothing served:\n{}", starting.logs.dump());
}

#[tokio::test]
async fn socket_activation_with_two_listen_entries_and_one_fd_fails_naming_the_missing_one() {
    let socket = bind_local();
    let passed = socket.local_addr().unwrap();
    let missing = DeadPort::new().addr;
    let config = format!(
        "[[listen]]\naddr = \"{passed}\"\n\n[[listen]]\naddr = \"{missing}\"\n\n\
         [upstream.app]\naddrs = [\"{}\"]\n\n[[route]]\nupstream = \"app\"\n",
        DeadPort::new().addr
    );
    let mut starting = Lameduck::spawn_with_listen_pid(&config, |c| {
        c.env("LISTEN_FDS", "1").env("LISTEN_FDNAMES", "lameduck.socket");
        inherit_fds(c, vec![socket.as_raw_fd()]);
    });
    assert_eq!(starting.exit_within(secs(15)).await, 1, "a start-up error");
    let error = startup_error(&starting.logs).await;
    assert!(error.contains(&missing.to_string()), "the error names the entry without a socket: {error}");
    assert!(!error.contains(&format!("\"{passed}\" has no socket")), "{passed} had its socket: {error}");
    // Nothing was bound in its place.
    let refused = TcpStream::connect(missing).await;
    assert!(refused.is_err(), "{missing} must not be bound: {refused:?}");
}

/// The `FDSTORE=1` datagram for `addr`, checked: one listening socket bound to `addr` attached.
async fn stored(notify: &NotifySocket, addr: SocketAddr) -> (usize, Notified) {
    let name = store_name(addr);
    let what = format!("FDSTORE=1 with FDNAME={name}");
    let (at, message) =
        notify.wait_for(0, &what, |m| m.has("FDSTORE=1") && m.value("FDNAME") == Some(name.as_str())).await;
    assert!(!message.truncated, "{message:?}");
    assert_eq!(message.fds.len(), 1, "exactly one fd (SCM_RIGHTS) with {what}: {message:?}");
    assert_eq!(socket_info(&message.fds[0]), (Some(addr), true), "the fd is the listening socket on {addr}");
    (at, message)
}

#[tokio::test]
async fn fd_store_receives_every_bound_listener_with_its_fd_before_ready() {
    let backend = Backend::named("ok").await;
    let notify = NotifySocket::bind();
    let tail = format!("{DRAIN_30S}\n[admin]\naddr = \"127.0.0.1:0\"\n");
    let proxy = Lameduck::start_with(&config(&[backend.addr], "", &tail), |c| notify.pass_to(c)).await;
    let (ready_at, _) = notify.wait_for(0, "READY=1", |m| m.has("READY=1")).await;
    let (listener_at, listener) = stored(&notify, proxy.addr).await;
    let admin = proxy.admin_addr.expect("admin listener");
    let (admin_at, _) = stored(&notify, admin).await;
    assert!(listener_at < ready_at && admin_at < ready_at, "parked before READY=1:\n{}", notify.dump());
    assert_eq!(listener.pid, Some(proxy.pid()));
    let stores = notify.messages().iter().filter(|m| m.has("FDSTORE=1")).count();
    assert_eq!(stores, 2, "one per bound socket:\n{}", notify.dump());
}

#[tokio::test]
async fn fd_store_socket_survives_a_crash_queues_clients_and_is_taken_back_at_start() {
    let backend = Backend::named("second life").await;
    let notify = NotifySocket::bind();
    let mut first = Lameduck::start_with(&config_for(backend.addr), |c| notify.pass_to(c)).await;
    let addr = first.addr;
    let (_, parked) = stored(&notify, addr).await;
    let parked: Arc<_> = parked.fds[0].clone();

    // A crash: the fd store (here: the test) still holds the socket, so a client that comes
    // now is queued in its backlog, not refused.
    first.kill().await;
    let mut queued = match timeout(PROMPT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => RawConn::from(stream),
        other => panic!("connect while no lameduck runs: {other:?} (want: queued in the backlog)"),
    };
    queued
        .send(format!("GET /queued HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .await;

    // The restart gets the parked socket back (as systemd passes it: named after it), plus a
    // parked socket the config no longer names, and its config adds a listener not parked yet.
    let stale = bind_local();
    let stale_addr = stale.local_addr().unwrap();
    let names = format!("{}:{}", store_name(addr), store_name(stale_addr));
    let added = free_addr();
    let config = format!(
        "[[listen]]\naddr = \"{addr}\"\n\n[[listen]]\naddr = \"{added}\"\n\n\
         [upstream.app]\naddrs = [\"{}\"]\n\n[[route]]\nupstream = \"app\"\n\n{DRAIN_30S}",
        backend.addr
    );
    let fds = vec![parked.as_fd().as_raw_fd(), stale.as_raw_fd()];
    let second_notify = NotifySocket::bind();
    let second = Lameduck::spawn_with_listen_pid(&config, |c| {
        second_notify.pass_to(c);
        c.env("LISTEN_FDS", "2").env("LISTEN_FDNAMES", &names);
        inherit_fds(c, fds);
    })
    .ready()
    .await;
    assert_eq!(source_of(&second.logs, addr), "fd-store");
    assert_eq!(second.addrs, vec![addr, added]);
    assert_eq!(source_of(&second.logs, added), "bound", "a listener missing from the store is bound");

    let answer = queued.try_read_response(false, PROMPT).await.expect("the queued client is served");
    assert_eq!((answer.status, answer.body_text().as_str()), (200, "second life"));

    // The new listener is parked, the taken-back one is not parked twice, the stale one is
    // removed from the store and closed.
    stored(&second_notify, added).await;
    let store_again =
        second_notify.messages().into_iter().find(|m| m.value("FDNAME") == Some(&store_name(addr)));
    assert!(store_again.is_none(), "{addr} is already in the store: {store_again:?}");
    let stale_name = store_name(stale_addr);
    let removed = |m: &Notified| m.has("FDSTOREREMOVE=1") && m.value("FDNAME") == Some(stale_name.as_str());
    second_notify.wait_for(0, "FDSTOREREMOVE=1 for the stale socket", removed).await;
    let listening = listening_inodes(second.pid());
    assert_eq!(listening.len(), 2, "the parked socket and the new one: {listening:?}");
    assert!(listening.contains(&inode_of(&*parked)), "lameduck listens on the parked socket itself");
    assert!(!listening.contains(&inode_of(&stale)), "the stale socket is closed");
}
