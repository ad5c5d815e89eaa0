//! The server's accepted connections, bounded: at most `max` open at once (beyond it a new
//! connection is closed at once), and a client must send the HTTP/2 preface (or an HTTP/1
//! request line, for gRPC-Web) within the handshake timeout, else its connection is closed.
//! Idle TCP connections that never speak once stayed open for good.

use futures::{Stream, StreamExt as _};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

/// Bytes of the HTTP/2 client preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`); an HTTP/1 request
/// is longer than this too.
const PREFACE_LEN: usize = 24;

/// The connections of `listener`, each holding one of `max` places until it closes and
/// closed if its first [`PREFACE_LEN`] bytes do not arrive within `handshake_timeout`.
pub fn bounded(
    listener: TcpListener,
    max: usize,
    handshake_timeout: Duration,
) -> impl Stream<Item = io::Result<Bounded>> {
    let places = Arc::new(Semaphore::new(max.max(1)));
    let last_warning: Arc<Mutex<Option<Instant>>> = Arc::default();
    // Small gRPC frames must not wait for Nagle's algorithm (tonic applies its own nodelay
    // setting only when it binds the socket itself).
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .filter_map(move |accepted| {
            let places = places.clone();
            let last_warning = last_warning.clone();
            async move {
                let io = match accepted {
                    Ok(io) => io,
                    Err(e) => return Some(Err(e)),
                };
                match places.try_acquire_owned() {
                    Ok(place) => Some(Ok(Bounded {
                        io,
                        _place: place,
                        handshake: Some(Box::pin(tokio::time::sleep(handshake_timeout))),
                        preface_left: PREFACE_LEN,
                    })),
                    Err(_) => {
                        // Dropping the socket closes it. One warning per minute at most: the
                        // refusals themselves may be an attack.
                        let mut last = last_warning.lock().unwrap_or_else(|p| p.into_inner());
                        if last.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                            *last = Some(Instant::now());
                            tracing::warn!(
                                max_connections = max,
                                "connection limit reached: new connections are closed at once"
                            );
                        }
                        None
                    }
                }
            }
        })
}

/// An accepted connection holding its place (see [`bounded`]).
pub struct Bounded {
    io: TcpStream,
    _place: OwnedSemaphorePermit,
    handshake: Option<Pin<Box<tokio::time::Sleep>>>,
    preface_left: usize,
}

impl Connected for Bounded {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for Bounded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(deadline) = self.handshake.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no request within the handshake timeout",
            )));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read
            && self.handshake.is_some()
        {
            let n = buf.filled().len() - before;
            self.preface_left = self.preface_left.saturating_sub(n);
            if self.preface_left == 0 {
                self.handshake = None;
            }
        }
        read
    }
}

impl AsyncWrite for Bounded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
