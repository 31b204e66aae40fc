//! Connection IO: replaying the bytes protocol detection read, counting
//! bytes, and copying opaque TCP with buffers that grow with use and cost
//! nothing while idle.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Bytes moved on the client side of one connection.
#[derive(Debug, Default)]
pub struct ByteCounts {
    /// From the client to the proxy.
    pub read: AtomicU64,
    /// From the proxy to the client.
    pub written: AtomicU64,
}

impl ByteCounts {
    pub fn read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
    pub(crate) fn add_read(&self, n: usize) {
        self.read.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub(crate) fn add_written(&self, n: usize) {
        self.written.fetch_add(n as u64, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A client connection that first replays the bytes read during protocol
    /// detection, and counts every byte in both directions.
    pub struct ClientIo<T> {
        prefix: Bytes,
        #[pin]
        inner: T,
        counts: std::sync::Arc<ByteCounts>,
    }
}

impl<T> ClientIo<T> {
    pub fn new(inner: T, prefix: Bytes, counts: std::sync::Arc<ByteCounts>) -> Self {
        Self {
            prefix,
            inner,
            counts,
        }
    }
}

impl<T: AsyncRead> AsyncRead for ClientIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            // Detection already counted these bytes as read.
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let res = this.inner.poll_read(cx, buf);
        this.counts.add_read(buf.filled().len() - before);
        res
    }
}

impl<T: AsyncWrite> AsyncWrite for ClientIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let res = this.inner.poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            this.counts.add_written(n);
        }
        res
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let res = this.inner.poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res {
            this.counts.add_written(n);
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

/// Smallest and largest copy buffer. A buffer starts small, doubles while
/// reads fill it, halves while they use under a quarter of it, and is freed
/// whenever the socket has nothing to read: an idle connection holds no
/// copy buffer at all.
pub const MIN_COPY_BUF: usize = 4 * 1024;
pub const MAX_COPY_BUF: usize = 256 * 1024;

/// Next buffer size after a read of `n` bytes into a buffer of `size`.
fn next_size(size: usize, n: usize) -> usize {
    if n == size {
        (size * 2).min(MAX_COPY_BUF)
    } else if n < size / 4 {
        (size / 2).max(MIN_COPY_BUF)
    } else {
        size
    }
}

/// Copies opaque TCP both ways until both sides have closed, passing each
/// side's end of stream on as a half-close. `prefix` (bytes read from the
/// client during detection) is sent upstream first. Returns bytes
/// (client→upstream, upstream→client).
pub async fn copy_opaque(
    client: TcpStream,
    prefix: Bytes,
    upstream: TcpStream,
    counts: &ByteCounts,
) -> Result<(u64, u64), CopyError> {
    let (client_r, client_w) = client.into_split();
    let (upstream_r, mut upstream_w) = upstream.into_split();
    upstream_w
        .write_all(&prefix)
        .await
        .map_err(Side::Upstream.err())?;
    let up = copy_half(client_r, upstream_w, Side::Client, |n| counts.add_read(n));
    let down = copy_half(upstream_r, client_w, Side::Upstream, |n| {
        counts.add_written(n)
    });
    let (sent, received) = tokio::try_join!(up, down)?;
    Ok((sent + prefix.len() as u64, received))
}

/// One side of a proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
}

impl Side {
    fn other(self) -> Self {
        match self {
            Self::Client => Self::Upstream,
            Self::Upstream => Self::Client,
        }
    }

    fn err(self) -> impl Fn(io::Error) -> CopyError {
        move |source| CopyError { side: self, source }
    }
}

/// A copy that failed, and the side whose socket failed.
#[derive(Debug, thiserror::Error)]
#[error("{side:?} side: {source}")]
pub struct CopyError {
    pub side: Side,
    #[source]
    pub source: io::Error,
}

/// Copies both ways between two streams of any kind (TLS included) until
/// both have closed, saying which side failed.
pub async fn copy_both<A, B>(client: &mut A, upstream: &mut B) -> Result<(u64, u64), CopyError>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut upstream = Marked(upstream);
    tokio::io::copy_bidirectional(client, &mut upstream)
        .await
        .map_err(
            |e| match e.get_ref().is_some_and(|i| i.is::<UpstreamFailed>()) {
                true => CopyError {
                    side: Side::Upstream,
                    source: e
                        .into_inner()
                        .and_then(|i| i.downcast::<UpstreamFailed>().ok())
                        .map(|u| u.0)
                        .unwrap_or_else(|| io::ErrorKind::Other.into()),
                },
                false => CopyError {
                    side: Side::Client,
                    source: e,
                },
            },
        )
}

/// An upstream's own IO error, marked so the copy can tell it apart.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UpstreamFailed(io::Error);

/// A stream whose every IO error is marked as [`UpstreamFailed`].
struct Marked<'a, T>(&'a mut T);

fn mark<T>(r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
    r.map_err(|e| io::Error::new(e.kind(), UpstreamFailed(e)))
}

impl<T: AsyncRead + Unpin> AsyncRead for Marked<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        mark(Pin::new(&mut *self.0).poll_read(cx, buf))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Marked<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        mark(Pin::new(&mut *self.0).poll_write(cx, buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        mark(Pin::new(&mut *self.0).poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        mark(Pin::new(&mut *self.0).poll_shutdown(cx))
    }
}

/// Copies `reader` (the `from` side) into `writer` (the other side).
async fn copy_half(
    reader: OwnedReadHalf,
    mut writer: OwnedWriteHalf,
    from: Side,
    count: impl Fn(usize),
) -> Result<u64, CopyError> {
    let (read_err, write_err) = (from.err(), from.other().err());
    let mut size = MIN_COPY_BUF;
    let mut total = 0u64;
    loop {
        reader.readable().await.map_err(&read_err)?;
        let mut buf = Vec::with_capacity(size);
        loop {
            buf.clear();
            match reader.try_read_buf(&mut buf) {
                Ok(0) => {
                    // End of stream: pass the half-close on. The peer may
                    // already be gone, which is not an error here.
                    match writer.shutdown().await {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                        Err(e) => return Err(write_err(e)),
                    }
                    return Ok(total);
                }
                Ok(n) => {
                    writer.write_all(&buf[..n]).await.map_err(&write_err)?;
                    count(n);
                    total += n as u64;
                    let next = next_size(size, n);
                    if next != size {
                        size = next;
                        buf = Vec::with_capacity(size);
                    }
                }
                // Nothing more to read now: drop the buffer while we wait.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(read_err(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A stream whose reads fail with `kind`, and whose writes succeed.
    struct Failing(io::ErrorKind);

    impl AsyncRead for Failing {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Err(self.0.into()))
        }
    }

    impl AsyncWrite for Failing {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(b.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_failed_copy_names_the_side_that_failed() {
        // The upstream resets: its fault, with its own error kind.
        let (mut client, _peer) = tokio::io::duplex(64);
        let mut upstream = Failing(io::ErrorKind::ConnectionReset);
        let e = copy_both(&mut client, &mut upstream).await.unwrap_err();
        assert_eq!(e.side, Side::Upstream);
        assert_eq!(e.source.kind(), io::ErrorKind::ConnectionReset);
        // The client resets: the client's.
        let mut client = Failing(io::ErrorKind::ConnectionAborted);
        let (mut upstream, _peer) = tokio::io::duplex(64);
        let e = copy_both(&mut client, &mut upstream).await.unwrap_err();
        assert_eq!(e.side, Side::Client);
        assert_eq!(e.source.kind(), io::ErrorKind::ConnectionAborted);
    }

    #[test]
    fn buffer_sizes_grow_and_shrink() {
        assert_eq!(next_size(MIN_COPY_BUF, MIN_COPY_BUF), 2 * MIN_COPY_BUF);
        assert_eq!(next_size(MAX_COPY_BUF, MAX_COPY_BUF), MAX_COPY_BUF);
        assert_eq!(next_size(64 * 1024, 100), 32 * 1024);
        assert_eq!(next_size(MIN_COPY_BUF, 1), MIN_COPY_BUF);
        assert_eq!(next_size(64 * 1024, 30 * 1024), 64 * 1024);
    }

    #[tokio::test]
    async fn prefix_is_replayed_then_counted_reads() {
        let (mut a, b) = tokio::io::duplex(64);
        let counts = std::sync::Arc::new(ByteCounts::default());
        let mut io = ClientIo::new(b, Bytes::from_static(b"GET "), counts.clone());
        a.write_all(b"/ HTTP/1.1").await.unwrap();
        drop(a);
        let mut out = String::new();
        io.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "GET / HTTP/1.1");
        assert_eq!(counts.read(), 10);
        io.write_all(b"abc").await.unwrap_err(); // peer closed
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    #[tokio::test]
    async fn opaque_copy_passes_half_close_both_ways() {
        // app_client <-> [client_side | proxy | upstream_side] <-> app_server
        let (mut app_client, client_side) = pair().await;
        let (upstream_side, mut app_server) = pair().await;
        let counts = std::sync::Arc::new(ByteCounts::default());
        let c2 = counts.clone();
        let proxy = tokio::spawn(async move {
            copy_opaque(client_side, Bytes::from_static(b"pre:"), upstream_side, &c2).await
        });
        // 1 MiB up, then half-close; the server still answers afterwards.
        let payload: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        app_client.write_all(&payload).await.unwrap();
        app_client.shutdown().await.unwrap();
        let mut got = Vec::new();
        app_server.read_to_end(&mut got).await.unwrap();
        assert_eq!(&got[..4], b"pre:");
        assert_eq!(&got[4..], &payload[..]);
        app_server
            .write_all(b"reply after half-close")
            .await
            .unwrap();
        app_server.shutdown().await.unwrap();
        let mut reply = String::new();
        app_client.read_to_string(&mut reply).await.unwrap();
        assert_eq!(reply, "reply after half-close");
        let (up, down) = proxy.await.unwrap().unwrap();
        assert_eq!(up, (1 << 20) + 4);
        assert_eq!(down, 22);
        assert_eq!(counts.read(), 1 << 20);
        assert_eq!(counts.written(), 22);
    }
}
