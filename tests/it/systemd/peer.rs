//! The test plays systemd: a notify socket that records every `sd_notify` datagram (with the
//! sender's pid and any fds attached), fds put in place for socket activation, and the
//! bookkeeping for processes the test did not spawn itself (a daemon's re-exec'd successors).

use std::io;
use std::mem::size_of;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::Interest;
use tokio::net::UnixDatagram;
use tokio::process::Command;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::harness::{binary, field_f64, message, Logs, PROMPT};

/// One datagram received on the notify socket.
#[derive(Debug, Clone)]
pub struct Notified {
    /// The datagram, e.g. `"READY=1\nSTATUS=serving: 0 connections\n"`.
    pub text: String,
    /// The sender's pid (from `SCM_CREDENTIALS`), as systemd sees it.
    pub pid: Option<i32>,
    /// Fds that came with it (`SCM_RIGHTS`), kept open while the message is.
    pub fds: Vec<Arc<OwnedFd>>,
    /// The datagram or its ancillary data did not fit the buffers.
    pub truncated: bool,
}

impl Notified {
    /// The value of `KEY=value` in the datagram.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    }

    /// The datagram has the line `line` (e.g. `READY=1`).
    pub fn has(&self, line: &str) -> bool {
        self.text.lines().any(|l| l == line)
    }
}

/// A Unix datagram socket in a temp dir, to be passed as `NOTIFY_SOCKET`. A task receives
/// every datagram (with `SO_PASSCRED`, so each carries its sender's pid) and keeps it.
pub struct NotifySocket {
    pub path: PathBuf,
    messages: Arc<Mutex<Vec<Notified>>>,
    seen: watch::Receiver<usize>,
    task: JoinHandle<()>,
    _dir: TempDir,
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.task.abort();
        if std::thread::panicking() {
            eprintln!("---- sd_notify messages ----\n{}\n----", self.dump());
        }
    }
}

impl NotifySocket {
    pub fn bind() -> NotifySocket {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        set_passcred(socket.as_raw_fd()).expect("SO_PASSCRED");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let (tx, seen) = watch::channel(0);
        let sink = messages.clone();
        let task = tokio::spawn(async move {
            loop {
                let received = socket.async_io(Interest::READABLE, || recv_notification(socket.as_raw_fd()));
                let Ok(message) = received.await else { return };
                let mut sink = sink.lock().unwrap();
                sink.push(message);
                tx.send_replace(sink.len());
            }
        });
        NotifySocket { path, messages, seen, task, _dir: dir }
    }

    /// Sets `NOTIFY_SOCKET` for `command`.
    pub fn pass_to(&self, command: &mut Command) {
        command.env("NOTIFY_SOCKET", &self.path);
    }

    pub fn messages(&self) -> Vec<Notified> {
        self.messages.lock().unwrap().clone()
    }

    /// How many datagrams have arrived so far.
    pub fn mark(&self) -> usize {
        self.messages.lock().unwrap().len()
    }

    fn find(&self, from: usize, pred: &impl Fn(&Notified) -> bool) -> Option<(usize, Notified)> {
        let messages = self.messages.lock().unwrap();
        messages.iter().enumerate().skip(from).find(|(_, m)| pred(m)).map(|(i, m)| (i, m.clone()))
    }

    /// The first datagram from index `from` on that matches `pred`, with its index; `None` if
    /// none has come within `within`.
    pub async fn try_wait_for(
        &self,
        from: usize,
        pred: impl Fn(&Notified) -> bool,
        within: Duration,
    ) -> Option<(usize, Notified)> {
        let mut seen = self.seen.clone();
        let deadline = Instant::now() + within;
        loop {
            if let Some(found) = self.find(from, &pred) {
                return Some(found);
            }
            if tokio::time::timeout_at(deadline, seen.changed()).await.is_err() {
                return None;
            }
        }
    }

    /// Like [`NotifySocket::try_wait_for`] within [`PROMPT`], panicking (with every datagram
    /// so far) if none comes.
    pub async fn wait_for(
        &self,
        from: usize,
        what: &str,
        pred: impl Fn(&Notified) -> bool,
    ) -> (usize, Notified) {
        match self.try_wait_for(from, pred, PROMPT).await {
            Some(found) => found,
            None => panic!("no sd_notify message {what} within {PROMPT:?}; got:\n{}", self.dump()),
        }
    }

    pub fn dump(&self) -> String {
        let messages = self.messages();
        let lines: Vec<String> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| format!("#{i} pid {:?} fds {}: {:?}", m.pid, m.fds.len(), m.text))
            .collect();
        lines.join("\n")
    }
}

fn set_passcred(fd: RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt with a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One `recvmsg` (non-blocking) with room for credentials and a few fds. Received fds are
/// close-on-exec, so no daemon spawned by another test inherits them.
fn recv_notification(fd: RawFd) -> io::Result<Notified> {
    let mut buf = [0u8; 4096];
    // u64s keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 64];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; 64]>() as _;
    // SAFETY: `msg` points at live buffers of the sizes it states.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    let mut pid = None;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel just filled, within
    // `msg_controllen`; each payload is read unaligned, as the macros do not promise alignment.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let header = &*cmsg;
            let data = libc::CMSG_DATA(cmsg);
            let len = header.cmsg_len as usize - libc::CMSG_LEN(0) as usize;
            match (header.cmsg_level, header.cmsg_type) {
                (libc::SOL_SOCKET, libc::SCM_RIGHTS) => {
                    for i in 0..len / size_of::<libc::c_int>() {
                        let fd = std::ptr::read_unaligned(data.cast::<libc::c_int>().add(i));
                        fds.push(Arc::new(OwnedFd::from_raw_fd(fd)));
                    }
                }
                (libc::SOL_SOCKET, libc::SCM_CREDENTIALS) => {
                    let cred = std::ptr::read_unaligned(data.cast::<libc::ucred>());
                    pid = Some(cred.pid);
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(Notified {
        text: String::from_utf8_lossy(&buf[..n as usize]).into_owned(),
        pid,
        fds,
        truncated: msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0,
    })
}

/// Makes `fds` the child's fds 3, 4, … (as systemd passes sockets), open across `exec`.
/// The fds must stay open in the test until the command is spawned.
pub fn inherit_fds(command: &mut Command, fds: Vec<RawFd>) {
    assert!(fds.len() <= 16, "a handful of fds at most");
    // SAFETY: between fork and exec the closure only calls fcntl, dup2 and close
    // (async-signal-safe) and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            // First move every fd out of the way (to 100+), so that no source is overwritten
            // by an earlier target; dup2 then leaves the targets without FD_CLOEXEC.
            let mut high = [0 as libc::c_int; 16];
            for (slot, &fd) in high.iter_mut().zip(&fds) {
                *slot = libc::fcntl(fd, libc::F_DUPFD, 100);
                if *slot < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (i, &fd) in high[..fds.len()].iter().enumerate() {
                if libc::dup2(fd, 3 + i as libc::c_int) < 0 {
                    return Err(io::Error::last_os_error());
                }
                libc::close(fd);
            }
            Ok(())
        });
    }
}

/// The address a socket fd is bound to, and whether it is a listening TCP socket.
pub fn socket_info(fd: &OwnedFd) -> (Option<SocketAddr>, bool) {
    let socket = socket2::SockRef::from(fd);
    let addr = socket.local_addr().ok().and_then(|a| a.as_socket());
    let listening =
        socket.r#type().ok() == Some(socket2::Type::STREAM) && socket.is_listener().unwrap_or(false);
    (addr, listening)
}

/// Inodes of the listening TCP sockets process `pid` has open (from `/proc`).
pub fn listening_inodes(pid: i32) -> Vec<u64> {
    let mut own = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("read /proc/PID/fd").flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else { continue };
        let target = target.to_string_lossy().into_owned();
        if let Some(inode) = target.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']')) {
            own.push(inode.parse::<u64>().expect("socket inode"));
        }
    }
    let mut listening = Vec::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else { continue };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            let (Some(state), Some(inode)) = (cols.get(3), cols.get(9)) else { continue };
            let inode: u64 = inode.parse().unwrap_or(0);
            if *state == "0A" && own.contains(&inode) {
                listening.push(inode);
            }
        }
    }
    listening
}

/// The inode of a socket the test holds.
pub fn inode_of(fd: &impl AsRawFd) -> u64 {
    // SAFETY: fstat into a zeroed stat on an fd the caller keeps open.
    unsafe {
        let mut stat: libc::stat = std::mem::zeroed();
        assert_eq!(libc::fstat(fd.as_raw_fd(), &mut stat), 0, "fstat");
        stat.st_ino
    }
}

/// Whether `pid` has exited: no such process, or a zombie nobody reaped yet.
pub fn exited(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| matches!(rest.trim_start().chars().next(), Some('Z' | 'X'))),
    }
}

/// Waits (polling `/proc`, at most `within`) until `pid` has exited.
pub async fn wait_exited(pid: i32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while !exited(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// Whether `pid` is a live lameduck process (its executable is the binary under test).
fn is_lameduck(pid: i32) -> bool {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"));
    let bin = Path::new(binary()).canonicalize();
    matches!((exe, bin), (Ok(exe), Ok(bin)) if exe == bin) && !exited(pid)
}

/// Processes the test did not spawn: a daemon's successors, started by a re-exec. When this
/// guard drops (pass or fail) it SIGKILLs every live lameduck that is a descendant of `root`
/// or logged `ready` with its pid in `logs`, so none outlives the test. Declare it after the
/// [`Lameduck`](crate::harness::Lameduck), so that it drops first, while `root` still runs and
/// its children are still its own.
pub struct Successors {
    root: i32,
    logs: Logs,
}

impl Successors {
    pub fn of(root: i32, logs: &Logs) -> Successors {
        Successors { root, logs: logs.clone() }
    }

    fn pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .logs
            .lines()
            .iter()
            .filter(|l| message(l) == "ready")
            .filter_map(|l| field_f64(l, "pid"))
            .map(|pid| pid as i32)
            .collect();
        let parents = parent_map();
        let mut frontier = vec![self.root];
        while let Some(parent) = frontier.pop() {
            for (&child, _) in parents.iter().filter(|(_, &p)| p == parent) {
                if !pids.contains(&child) {
                    frontier.push(child);
                    pids.push(child);
                }
            }
        }
        pids.retain(|&pid| pid != self.root);
        pids
    }
}

impl Drop for Successors {
    fn drop(&mut self) {
        for pid in self.pids() {
            // Only a lameduck still running: never a recycled pid of some other process.
            if is_lameduck(pid) {
                // SAFETY: kill(2) on a pid just checked to be a running lameduck.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// pid -> parent pid, for every process in `/proc`.
fn parent_map() -> std::collections::HashMap<i32, i32> {
    let mut map = std::collections::HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return map };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // "pid (comm) S ppid ..."
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
        if let Some(ppid) = ppid {
            map.insert(pid, ppid);
        }
    }
    map
}
