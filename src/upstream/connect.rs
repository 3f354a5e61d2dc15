//! Opening connections to upstream addresses: TCP (host names resolved at connect time, every
//! resolved address tried in turn), then TLS for https upstreams.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::upstream::Target;
use crate::config::UpstreamAddr;

/// A connection to `target`, with the TLS handshake done for https upstreams.
pub(super) async fn connect_io(target: &Target) -> io::Result<UpstreamIo> {
    let stream = connect_tcp(&target.addr).await?;
    stream.set_nodelay(true)?;
    match &target.tls {
        None => Ok(UpstreamIo::Plain(stream)),
        Some(tls) => {
            let stream = tls.connector.connect(tls.server_name.clone(), stream).await?;
            Ok(UpstreamIo::Tls(Box::new(stream)))
        }
    }
}

/// The byte stream to an upstream: plain TCP or TLS over it.
#[derive(Debug)]
pub(super) enum UpstreamIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for UpstreamIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
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
