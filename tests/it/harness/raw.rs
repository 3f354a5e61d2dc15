//! A raw HTTP/1.1 client over a plain `TcpStream`, for bad input and exact
//! wire bytes. It writes whatever it is given and parses what comes back by
//! hand (httparse for the head; Content-Length, chunked or read-to-close for
//! the body), so a missing final chunk or an early close is visible.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use super::PROMPT;

/// One parsed response.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body came chunked.
    pub chunked: bool,
}

impl RawResponse {
    /// The first value of `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `Connection: close` is among the headers.
    pub fn closes(&self) -> bool {
        self.headers.iter().any(|(n, v)| {
            n.eq_ignore_ascii_case("connection")
                && v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"))
        })
    }
}

pub struct RawConn {
    stream: TcpStream,
    /// Bytes read but not yet parsed.
    buf: Vec<u8>,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let stream = match timeout(PROMPT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => panic!("connect {addr}: {e}"),
            Err(_) => panic!("connect {addr}: no answer within {PROMPT:?}"),
        };
        RawConn::from(stream)
    }

    pub fn from(stream: TcpStream) -> RawConn {
        RawConn { stream, buf: Vec::new() }
    }

    /// Writes all of `bytes`, within [`PROMPT`].
    pub async fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match timeout(PROMPT, self.stream.write_all(bytes)).await {
            Ok(written) => written,
            Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the peer stopped reading")),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes).await.expect("send to lameduck");
    }

    /// Reads more bytes into `buf`; `Ok(0)` at EOF.
    async fn fill(&mut self, deadline: Instant) -> Result<usize, String> {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(n)
            }
            Ok(Err(e)) => Err(format!("read: {e}")),
            Err(_) => Err("read: timed out".into()),
        }
    }

    /// Ensures `buf` holds at least `n` bytes.
    async fn need(&mut self, n: usize, deadline: Instant) -> Result<(), String> {
        while self.buf.len() < n {
            if self.fill(deadline).await? == 0 {
                return Err(format!("closed after {} of {n} bytes", self.buf.len()));
            }
        }
        Ok(())
    }

    /// Takes bytes up to and including the next CRLF.
    async fn line(&mut self, deadline: Instant) -> Result<Vec<u8>, String> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                return Ok(self.buf.drain(..end + 2).collect());
            }
            if self.fill(deadline).await? == 0 {
                return Err("closed in the middle of a line".into());
            }
        }
    }

    /// Reads one response head (status line and headers, 1xx included).
    pub async fn try_read_head(&mut self, within: Duration) -> Result<RawResponse, String> {
        let deadline = Instant::now() + within;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 128];
            let mut parsed = httparse::Response::new(&mut headers);
            match parsed.parse(&self.buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let response = RawResponse {
                        status: parsed.code.expect("status"),
                        headers: parsed
                            .headers
                            .iter()
                            .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
                            .collect(),
                        body: Vec::new(),
                        chunked: false,
                    };
                    self.buf.drain(..len);
                    return Ok(response);
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => {
                    return Err(format!("bad response head ({e}): {:?}", String::from_utf8_lossy(&self.buf)))
                }
            }
            if self.fill(deadline).await? == 0 {
                return Err(format!("closed before a response head ({} bytes)", self.buf.len()));
            }
        }
    }

    /// Reads one whole final response; `head_request` when it answers a HEAD.
    pub async fn try_read_response(
        &mut self,
        head_request: bool,
        within: Duration,
    ) -> Result<RawResponse, String> {
        let deadline = Instant::now() + within;
        let mut response = self.try_read_head(within).await?;
        let bodiless =
            head_request || response.status < 200 || response.status == 204 || response.status == 304;
        let chunked = response
            .header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
        if bodiless {
            return Ok(response);
        }
        if chunked {
            response.chunked = true;
            response.body = self.chunked_body(deadline).await?;
        } else if let Some(len) = response.header("content-length") {
            let len: usize = len.trim().parse().map_err(|e| format!("content-length {len:?}: {e}"))?;
            self.need(len, deadline).await?;
            response.body = self.buf.drain(..len).collect();
        } else {
            response.body = self.read_to_close(deadline).await?;
        }
        Ok(response)
    }

    async fn chunked_body(&mut self, deadline: Instant) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        loop {
            let line = self.line(deadline).await?;
            let text = String::from_utf8_lossy(&line);
            let size = text.trim_end().split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16).map_err(|e| format!("chunk size {text:?}: {e}"))?;
            if size == 0 {
                // Trailers (none expected) up to the empty line.
                while self.line(deadline).await? != b"\r\n" {}
                return Ok(body);
            }
            self.need(size + 2, deadline).await?;
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
        }
    }

    async fn read_to_close(&mut self, deadline: Instant) -> Result<Vec<u8>, String> {
        while self.fill(deadline).await? > 0 {}
        Ok(std::mem::take(&mut self.buf))
    }

    pub async fn read_head(&mut self) -> RawResponse {
        self.try_read_head(PROMPT).await.expect("response head")
    }

    pub async fn read_response(&mut self) -> RawResponse {
        self.try_read_response(false, PROMPT).await.expect("response")
    }

    /// Everything the peer sends until it closes (EOF or reset), or `None`
    /// if it is still open after `within`. Includes bytes already buffered.
    pub async fn read_until_closed(&mut self, within: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + within;
        loop {
            match self.fill(deadline).await {
                Ok(0) => return Some(std::mem::take(&mut self.buf)),
                Ok(_) => {}
                Err(e) if e.contains("timed out") => return None,
                Err(_) => return Some(std::mem::take(&mut self.buf)), // reset
            }
        }
    }

    /// Reads until `needle` has been received (kept in the buffer).
    pub async fn read_until_contains(&mut self, needle: &[u8], within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        while !self.buf.windows(needle.len()).any(|w| w == needle) {
            if self.fill(deadline).await? == 0 {
                return Err(format!("closed before {:?}", String::from_utf8_lossy(needle)));
            }
        }
        Ok(())
    }

    /// True once the peer has closed; false if it is still open after `within`.
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        self.read_until_closed(within).await.is_some()
    }
}

/// Connects, sends `bytes`, returns the response.
pub async fn raw_request(addr: SocketAddr, bytes: &[u8]) -> RawResponse {
    let mut conn = RawConn::connect(addr).await;
    conn.send(bytes).await;
    conn.read_response().await
}

/// A one-shot `GET path` with `Connection: close`.
pub async fn raw_get(addr: SocketAddr, path: &str) -> RawResponse {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    raw_request(addr, request.as_bytes()).await
}
