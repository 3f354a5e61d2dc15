//! Upstreams for the proxy to talk to. [`Backend`] is a real hyper HTTP/1.1
//! server (keep-alive) on `127.0.0.1:0` running a test-supplied handler; it
//! records every request (head at arrival, body bytes as the handler reads
//! them) and announces each arrival on a channel ([`Backend::arrived`]).
//! [`DeadPort`] refuses connections, [`Blackhole`] never answers a SYN.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::body::Body;
use super::{ms, PROMPT};

/// What a backend handler receives: the request with a body that records
/// what is read from it.
pub type Req = Request<Recording>;

/// Only the first MiB of each body is kept; the length is always counted.
const BODY_KEEP: usize = 1 << 20;

#[derive(Debug, Default)]
struct BodyRecord {
    kept: Vec<u8>,
    len: u64,
    complete: bool,
}

/// One request as the backend received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    body: Arc<Mutex<BodyRecord>>,
}

impl Recorded {
    /// The body bytes the handler has read so far (at most the first MiB).
    pub fn body(&self) -> Vec<u8> {
        self.body.lock().unwrap().kept.clone()
    }

    pub fn body_len(&self) -> u64 {
        self.body.lock().unwrap().len
    }

    /// Whether the handler read the body to its end.
    pub fn body_complete(&self) -> bool {
        self.body.lock().unwrap().complete
    }

    /// Every value of `name`, joined with ", " (how repeated headers combine).
    pub fn header(&self, name: &str) -> Option<String> {
        let values: Vec<&str> =
            self.headers.get_all(name).iter().map(|v| v.to_str().expect("header is ascii")).collect();
        (!values.is_empty()).then(|| values.join(", "))
    }
}

/// A request body that appends what passes through it to its [`Recorded`].
pub struct Recording {
    inner: Incoming,
    record: Arc<Mutex<BodyRecord>>,
}

impl hyper::body::Body for Recording {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        let mut record = this.record.lock().unwrap();
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let room = BODY_KEEP.saturating_sub(record.kept.len());
                    record.kept.extend_from_slice(&data[..room.min(data.len())]);
                    record.len += data.len() as u64;
                }
            }
            None => record.complete = true,
            Some(Err(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Shared between the accept loop, the connection tasks and the test.
#[derive(Default)]
struct State {
    requests: Mutex<Vec<Recorded>>,
    connections: AtomicUsize,
}

pub struct Backend {
    pub addr: SocketAddr,
    state: Arc<State>,
    /// Sent by the service on each arrival, before the handler runs.
    arrivals: tokio::sync::Mutex<mpsc::UnboundedReceiver<Recorded>>,
    accept: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Backend {
    pub async fn start<F, Fut>(handler: F) -> Backend
    where
        F: Fn(Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let state = Arc::new(State::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let accept = tokio::spawn(accept_loop(listener, Arc::new(handler), state.clone(), tx));
        Backend { addr, state, arrivals: tokio::sync::Mutex::new(rx), accept }
    }

    /// Answers every request with `name` as its body.
    pub async fn named(name: &'static str) -> Backend {
        Backend::start(move |_req| async move { Response::new(super::full(name)) }).await
    }

    /// Answers every request with `name`, but holds requests to `path` until the returned
    /// opener is opened: a request that stays in flight as long as a test wants.
    pub async fn holding(path: &'static str, name: &'static str) -> (super::Opener, Backend) {
        let (release, held) = super::gate();
        let backend = Backend::start(move |req: Req| {
            let held = held.clone();
            async move {
                if req.uri().path() == path {
                    held.wait().await;
                }
                Response::new(super::full(name))
            }
        })
        .await;
        (release, backend)
    }

    /// Streams every request body straight back.
    pub async fn echo() -> Backend {
        Backend::start(|req: Req| async move {
            use http_body_util::BodyExt;
            Response::new(req.into_body().map_err(Into::into).boxed_unsync())
        })
        .await
    }

    /// The next request to arrive (in order), waiting at most [`PROMPT`].
    pub async fn arrived(&self) -> Recorded {
        let mut arrivals = self.arrivals.lock().await;
        match timeout(PROMPT, arrivals.recv()).await {
            Ok(Some(recorded)) => recorded,
            Ok(None) => panic!("backend {} stopped", self.addr),
            Err(_) => panic!("no request reached backend {} within {PROMPT:?}", self.addr),
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }
}

async fn accept_loop<F, Fut>(
    listener: TcpListener,
    handler: Arc<F>,
    state: Arc<State>,
    arrivals: mpsc::UnboundedSender<Recorded>,
) where
    F: Fn(Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    loop {
        let Ok((stream, _peer)) = listener.accept().await else {
            continue;
        };
        state.connections.fetch_add(1, Ordering::SeqCst);
        let (handler, state, arrivals) = (handler.clone(), state.clone(), arrivals.clone());
        let service = service_fn(move |req: Request<Incoming>| {
            let req = record(req, &state, &arrivals);
            let response = handler(req);
            async move { Ok::<_, std::convert::Infallible>(response.await) }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn record(req: Request<Incoming>, state: &State, arrivals: &mpsc::UnboundedSender<Recorded>) -> Req {
    let (parts, inner) = req.into_parts();
    let body = Arc::new(Mutex::new(BodyRecord::default()));
    let recorded = Recorded {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
        body: body.clone(),
    };
    state.requests.lock().unwrap().push(recorded.clone());
    let _ = arrivals.send(recorded);
    Request::from_parts(parts, Recording { inner, record: body })
}

/// An address that refuses connections: a port bound (so nobody else gets it)
/// but not listening, which the kernel answers with RST.
pub struct DeadPort {
    pub addr: SocketAddr,
    _socket: TcpSocket,
}

impl DeadPort {
    pub fn new() -> DeadPort {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
        let addr = socket.local_addr().expect("addr");
        DeadPort { addr, _socket: socket }
    }
}

/// A local address whose SYNs go unanswered: a listener with backlog 1 that
/// never accepts, its accept queue filled by our own connections. Linux drops
/// SYNs to a listener whose accept queue is full, so a connect just hangs —
/// a blackhole that never leaves the loopback interface.
pub struct Blackhole {
    pub addr: SocketAddr,
    _listener: TcpListener,
    _fillers: Vec<TcpStream>,
}

impl Blackhole {
    pub async fn start() -> Blackhole {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
        let listener = socket.listen(1).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let mut fillers = Vec::new();
        for _ in 0..16 {
            match timeout(ms(500), TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => fillers.push(stream),
                Ok(Err(e)) => panic!("blackhole {addr}: connect failed instead of hanging: {e}"),
                Err(_) => return Blackhole { addr, _listener: listener, _fillers: fillers },
            }
        }
        panic!("blackhole {addr}: the accept queue never filled")
    }
}
