//! Opening connections to upstream addresses: TCP (host names resolved at connect time, every
//! resolved address tried in turn), then TLS for https upstreams.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::UpstreamAddr;
use crate::tls::UpstreamTls;

/// A connection to `addr`, with the TLS handshake done when `tls` is set (https upstreams).
pub(super) async fn connect_io(addr: &UpstreamAddr, tls: Option<&UpstreamTls>) -> io::Result<UpstreamIo> {
    let stream = connect_tcp(addr).await?;
    stream.set_nodelay(true)?;
    match tls {
        None => Ok(UpstreamIo::Plain(stream)),
        Some(tls) => {
            let stream = tls.connector.connect(tls.server_name.clone(), stream).await?;
            Ok(UpstreamIo::Tls(Box::new(stream)))
        }
    }
}

/// The byte stream to an upstream: plain TCP or TLS over it (or, in unit tests, a script).
#[derive(Debug)]
pub enum UpstreamIo {
    /// Cleartext TCP.
    Plain(TcpStream),
    /// TLS over TCP (boxed: the TLS state is large and most upstreams are cleartext).
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// Scripted reads and writes, for driving the client in unit tests.
    #[cfg(test)]
    Scripted(super::tests::ScriptedIo),
}

impl UpstreamIo {
    /// Whether the socket has reported something to read (or an error) since it was last
    /// read, without a syscall. A script reports nothing: its reads are the test's to give.
    pub(super) fn poll_read_ready(&self, cx: &mut Context<'_>) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.poll_read_ready(cx).is_ready(),
            UpstreamIo::Tls(s) => s.get_ref().0.poll_read_ready(cx).is_ready(),
            #[cfg(test)]
            UpstreamIo::Scripted(_) => false,
        }
    }
}

/// Calls `$call` on whichever stream `$io` holds, bound as `$s`.
macro_rules! on_stream {
    ($io:expr, $s:ident => $call:expr) => {
        match $io {
            UpstreamIo::Plain($s) => $call,
            UpstreamIo::Tls($s) => $call,
            #[cfg(test)]
            UpstreamIo::Scripted($s) => $call,
        }
    };
}

impl AsyncRead for UpstreamIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        on_stream!(self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        on_stream!(self.get_mut(), s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        on_stream!(self.get_mut(), s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        on_stream!(self, s => s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_stream!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_stream!(self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
    }
}

async fn connect_tcp(addr: &UpstreamAddr) -> io::Result<TcpStream> {
    match addr {
        UpstreamAddr::Ip(addr) => TcpStream::connect(addr).await,
        UpstreamAddr::Name { host, port } => {
            let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host}: no addresses"));
            for resolved in tokio::net::lookup_host((host.as_str(), *port)).await? {
                match TcpStream::connect(resolved).await {
                    Ok(stream) => return Ok(stream),
                    Err(e) => last = e,
                }
            }
            Err(last)
        }
    }
}
