//! Holding requests instead of failing them: while their upstream is paused (admin API), and
//! while every address refuses connections (a backend restarting, `connect_retry`).
//!
//! A held request has sent nothing yet: it keeps its client's body unread in the client's
//! socket, so holding costs no memory per byte. Requests held for a pause queue in arrival
//! order and go out oldest first when the upstream resumes: one at a time, each holding a
//! [`Baton`] until it has its upstream connection, so that they also *reach* the backend in
//! that order (woken all at once, they would race to connect); requests waiting to reconnect
//! retry on a capped, jittered back-off. Both kinds count against `max_held`, and both are
//! answered (503) when the daemon's drain deadline comes ([`Gate::release`]).
//!
//! The fast path is one load: [`Gate::attention`] is false unless something is paused.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::error::{HoldError, SendError};
use crate::config::HoldConfig;

/// The first pause between connect retries; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// The longest pause between connect retries: a backend back up is found within this long.
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// The pause state of one upstream and its queue of held requests.
#[derive(Debug)]
pub(super) struct Gate {
    /// Set while the upstream or any of its addresses is paused: the one atomic load a
    /// request that is not held pays for this feature.
    pub(super) attention: AtomicBool,
    /// The whole upstream is paused (changed only under `queue`'s lock).
    pub(super) paused: AtomicBool,
    /// Held requests, paused or retrying.
    held: AtomicUsize,
    pub(super) queue: Arc<Mutex<Queue>>,
    /// Becomes true at the drain deadline: every held request gives up.
    released: watch::Sender<bool>,
    pub(super) settings: HoldConfig,
}

/// What the gate's lock guards.
#[derive(Debug, Default)]
pub(super) struct Queue {
    /// Requests waiting for a resume, oldest first.
    waiters: VecDeque<oneshot::Sender<Baton>>,
    /// A [`Baton`] is out: the waiters are going out one by one.
    passing: bool,
    /// Bumped by every pause and resume: a scheduled `expire` resumes only if nothing
    /// changed the pause since.
    pub(super) generation: u64,
    /// The drain deadline came: nothing is held any more.
    released: bool,
}

/// Why a request could not go out on any address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Blocked {
    /// Every address is paused.
    Paused,
    /// No address accepted a connection.
    Unreachable,
}

impl Gate {
    pub(super) fn new(settings: HoldConfig) -> Self {
        Gate {
            attention: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            held: AtomicUsize::new(0),
            queue: Arc::new(Mutex::new(Queue::default())),
            released: watch::Sender::new(false),
            settings,
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Queue> {
        lock(&self.queue)
    }

    /// Requests held now.
    pub(super) fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Answers every held request (503) and holds nothing from now on: the drain deadline.
    pub(super) fn release(&self) {
        let mut queue = self.lock();
        queue.released = true;
        queue.waiters.clear();
        self.released.send_replace(true);
    }

    /// Starts sending the held requests on, oldest first, unless they are on their way
    /// already; called under the lock (`queue`) once an address serves again.
    pub(super) fn wake(&self, queue: &mut Queue) {
        if !queue.passing {
            hand_on(queue, &self.queue);
        }
    }

    /// A place in the queue, counted as held, or `None` when `all_paused` is false by now
    /// (resumed meanwhile). Counted under the lock, so the count never runs ahead of the
    /// queue: whoever sees `held` go up knows the request has its place.
    fn enqueue(&self, all_paused: impl FnOnce() -> bool) -> Result<Option<Queued<'_>>, HoldError> {
        let mut queue = self.lock();
        if queue.released {
            return Err(HoldError::Released);
        }
        if !all_paused() {
            return Ok(None);
        }
        let held = self.hold_one()?;
        let (tx, rx) = oneshot::channel();
        queue.waiters.push_back(tx);
        Ok(Some(Queued { turn: rx, _held: held }))
    }

    /// Counts one more held request, unless `max_held` are held already.
    fn hold_one(&self) -> Result<HeldGuard<'_>, HoldError> {
        if self.held.fetch_add(1, Ordering::Relaxed) >= self.settings.max_held {
            self.held.fetch_sub(1, Ordering::Relaxed);
            return Err(HoldError::Full);
        }
        Ok(HeldGuard(self))
    }
}

fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    queue.lock().expect("the gate's lock is never held across a panic")
}

/// A resumed request's turn to go out. Dropped once the request has its upstream
/// connection (or gives up), it passes the turn to the next waiter.
#[derive(Debug)]
pub(super) struct Baton(Option<Arc<Mutex<Queue>>>);

impl Baton {
    /// Ends the turns without passing this one on: its request found the upstream paused
    /// again and queues anew (behind the others); the next resume starts the turns afresh.
    pub(super) fn park(mut self) {
        if let Some(queue) = self.0.take() {
            lock(&queue).passing = false;
        }
    }
}

impl Drop for Baton {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            hand_on(&mut lock(&shared), &shared);
        }
    }
}

/// Gives the turn to the oldest waiter still waiting (under the lock).
fn hand_on(queue: &mut Queue, shared: &Arc<Mutex<Queue>>) {
    while let Some(next) = queue.waiters.pop_front() {
        match next.send(Baton(Some(shared.clone()))) {
            Ok(()) => {
                queue.passing = true;
                return;
            }
            // Its request gave up waiting: emptied, the baton is dropped without passing on.
            Err(mut refused) => refused.0 = None,
        }
    }
    queue.passing = false;
}

/// A request's place in the queue.
struct Queued<'a> {
    /// Where its turn comes.
    turn: oneshot::Receiver<Baton>,
    _held: HeldGuard<'a>,
}

/// One held request in [`Gate::held`].
#[derive(Debug)]
struct HeldGuard<'a>(&'a Gate);

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One request's waiting, across however many times it is held: the `hold` and
/// `connect_retry` bounds run from its first wait of each kind.
#[derive(Debug, Default)]
pub(super) struct Waiting<'g> {
    hold_until: Option<Instant>,
    retry_until: Option<Instant>,
    backoff: Option<Duration>,
    /// Counts the request as held for as long as it keeps retrying to connect, its tries
    /// included: an operator sees it held until it is sent or answered.
    retrying: Option<HeldGuard<'g>>,
}

impl<'g> Waiting<'g> {
    /// Waits until the request may be tried again (with its turn, after a resume), or says
    /// why it may not.
    ///
    /// # Errors
    /// - [`SendError::Unavailable`] when no address accepted within `connect_retry`;
    /// - [`SendError::Held`] when `max_held` are held already, `hold` passed while paused, or
    ///   the drain deadline came.
    pub(super) async fn wait(
        &mut self,
        gate: &'g Gate,
        upstream: &str,
        blocked: Blocked,
        all_paused: impl FnOnce() -> bool,
    ) -> Result<Option<Baton>, SendError> {
        let now = Instant::now();
        if blocked == Blocked::Unreachable {
            let until = *self.retry_until.get_or_insert(now + gate.settings.connect_retry);
            if now >= until {
                return Err(SendError::Unavailable);
            }
        }
        let full = |_: &HoldError| {
            warn!(upstream.name = upstream, max_held = gate.settings.max_held, "hold queue full; 503");
        };
        match blocked {
            Blocked::Paused => {
                // Counted by its place in the queue from now on.
                self.retrying = None;
                let Some(queued) = gate.enqueue(all_paused).inspect_err(full)? else { return Ok(None) };
                debug!(upstream.name = upstream, held = gate.held(), "request held: upstream paused");
                self.until_resumed(gate, upstream, now, queued).await.map(Some)
            }
            Blocked::Unreachable => {
                if self.retrying.is_none() {
                    self.retrying = Some(gate.hold_one().inspect_err(full)?);
                    debug!(upstream.name = upstream, held = gate.held(), "request held: retrying to connect");
                }
                self.before_retry(gate, now).await.map(|()| None)
            }
        }
    }

    async fn until_resumed(
        &mut self,
        gate: &Gate,
        upstream: &str,
        now: Instant,
        queued: Queued<'_>,
    ) -> Result<Baton, SendError> {
        let until = *self.hold_until.get_or_insert(now + gate.settings.hold);
        tokio::select! {
            turn = queued.turn => turn.map_err(|_| SendError::Held(HoldError::Released)),
            _ = tokio::time::sleep_until(until) => {
                warn!(upstream.name = upstream, hold_secs = gate.settings.hold.as_secs_f64(), "held request timed out; 503");
                Err(SendError::Held(HoldError::TimedOut))
            }
        }
    }

    async fn before_retry(&mut self, gate: &Gate, now: Instant) -> Result<(), SendError> {
        let until = self.retry_until.expect("set by wait");
        let backoff = self.backoff.map_or(FIRST_BACKOFF, |b| (b * 2).min(MAX_BACKOFF));
        self.backoff = Some(backoff);
        // Full jitter in [backoff/2, backoff]: clients held together do not retry in step.
        let pause = backoff.mul_f64(0.5 + fastrand::f64() / 2.0);
        let mut released = gate.released.subscribe();
        tokio::select! {
            _ = tokio::time::sleep_until((now + pause).min(until)) => Ok(()),
            _ = released.wait_for(|released| *released) => Err(SendError::Held(HoldError::Released)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(max_held: usize) -> Arc<Gate> {
        let settings =
            HoldConfig { hold: Duration::from_secs(30), connect_retry: Duration::from_secs(5), max_held };
        Arc::new(Gate::new(settings))
    }

    /// Starts a request that waits for a resume; returns once it is queued.
    async fn held(gate: &Arc<Gate>, n: usize) -> tokio::task::JoinHandle<Result<Option<Baton>, SendError>> {
        let gate2 = gate.clone();
        let task =
            tokio::spawn(
                async move { Waiting::default().wait(&gate2, "app", Blocked::Paused, || true).await },
            );
        while gate.lock().waiters.len() < n {
            tokio::task::yield_now().await;
        }
        task
    }

    #[tokio::test]
    async fn held_requests_go_out_oldest_first() {
        let gate = gate(10);
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..3 {
            let (gate2, order) = (gate.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                Waiting::default().wait(&gate2, "app", Blocked::Paused, || true).await.expect("resumed");
                order.lock().unwrap().push(i);
            }));
            while gate.lock().waiters.len() <= i {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(gate.held(), 3);
        gate.wake(&mut gate.lock());
        for task in tasks {
            task.await.expect("no panic");
        }
        assert_eq!(*order.lock().unwrap(), [0, 1, 2]);
        assert_eq!(gate.held(), 0, "nothing is held once they went out");
    }

    #[tokio::test]
    async fn past_max_held_a_request_is_refused_at_once() {
        let gate = gate(1);
        let first = held(&gate, 1).await;
        let second = Waiting::default().wait(&gate, "app", Blocked::Paused, || true).await;
        assert!(matches!(second, Err(SendError::Held(HoldError::Full))), "{second:?}");
        let unreachable = Waiting::default().wait(&gate, "app", Blocked::Unreachable, || true).await;
        assert!(matches!(unreachable, Err(SendError::Held(HoldError::Full))), "retrying counts too");
        gate.release();
        assert!(matches!(first.await.expect("no panic"), Err(SendError::Held(HoldError::Released))));
    }

    #[tokio::test]
    async fn a_request_resumed_before_it_queues_goes_on_at_once() {
        let gate = gate(10);
        let went = Waiting::default().wait(&gate, "app", Blocked::Paused, || false).await;
        assert!(went.is_ok(), "{went:?}");
        assert_eq!(gate.lock().waiters.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn hold_bounds_the_wait_for_a_resume() {
        let gate = gate(10);
        let started = Instant::now();
        let waited = Waiting::default().wait(&gate, "app", Blocked::Paused, || true).await;
        assert!(matches!(waited, Err(SendError::Held(HoldError::TimedOut))), "{waited:?}");
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn connect_retries_back_off_and_stop_at_connect_retry() {
        let gate = gate(10);
        let started = Instant::now();
        let mut waiting = Waiting::default();
        let mut pauses = Vec::new();
        let mut last = started;
        let gave_up = loop {
            match waiting.wait(&gate, "app", Blocked::Unreachable, || false).await {
                Ok(_) => {
                    pauses.push(last.elapsed());
                    last = Instant::now();
                }
                Err(e) => break e,
            }
        };
        assert!(matches!(gave_up, SendError::Unavailable), "{gave_up:?}");
        assert_eq!(started.elapsed(), Duration::from_secs(5), "bounded by connect_retry");
        assert!(pauses[0] >= FIRST_BACKOFF / 2 && pauses[0] <= FIRST_BACKOFF, "{pauses:?}");
        assert!(pauses.iter().all(|p| *p <= MAX_BACKOFF), "capped: {pauses:?}");
        assert!(pauses[4] > pauses[0], "backs off: {pauses:?}");
    }

    #[tokio::test]
    async fn without_connect_retry_an_unreachable_upstream_fails_at_once() {
        let settings = HoldConfig { connect_retry: Duration::ZERO, ..HoldConfig::default() };
        let gate = Gate::new(settings);
        let waited = Waiting::default().wait(&gate, "app", Blocked::Unreachable, || false).await;
        assert!(matches!(waited, Err(SendError::Unavailable)), "{waited:?}");
        assert_eq!(gate.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_retrying_to_connect_is_held_between_its_tries_too() {
        let gate = gate(10);
        let mut waiting = Waiting::default();
        waiting.wait(&gate, "app", Blocked::Unreachable, || false).await.expect("a retry");
        assert_eq!(gate.held(), 1, "still held while it tries again");
        waiting.wait(&gate, "app", Blocked::Unreachable, || false).await.expect("a retry");
        assert_eq!(gate.held(), 1, "counted once");
        drop(waiting);
        assert_eq!(gate.held(), 0, "no longer held once sent or failed");
    }
}
