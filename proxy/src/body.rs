//! Request bodies on their way upstream: streamed as they arrive, and —
//! when the route may retry — copied on the way, up to [`REPLAY_LIMIT`],
//! so a retry can send the same bytes again.
//!
//! The copy never holds the request back: frames go upstream as soon as
//! they arrive (a streaming gRPC client waiting for its first response
//! keeps working), and a body that outgrows the limit simply stops being
//! copied and becomes non-retryable. A retry is possible only once the
//! whole body has gone through (the copy is complete): a response that
//! comes back before the client finished sending is not retried.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// Request bodies up to this size are kept for replay (64 KiB, the retry
/// decision's own limit).
pub const REPLAY_LIMIT: usize = crate::traffic::retry::REPLAY_LIMIT as usize;

/// A request body as the upstream connection sends it.
pub enum ReqBody {
    /// Straight from the client.
    Stream(Incoming),
    /// From the client, copied for a possible retry.
    Tee(TeeBody<Incoming>),
    /// A copy sent again.
    Replay(ReplayBody),
}

impl ReqBody {
    /// An empty body (for requests a proxy makes itself).
    pub fn empty() -> Self {
        Self::Replay(ReplayBody {
            data: Vec::new().into_iter(),
            trailers: None,
        })
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Stream(b) => Pin::new(b).poll_frame(cx),
            Self::Tee(b) => Pin::new(b).poll_frame(cx),
            Self::Replay(b) => Poll::Ready(b.next_frame().map(Ok)),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Stream(b) => b.is_end_stream(),
            Self::Tee(b) => b.inner.is_end_stream(),
            Self::Replay(b) => b.data.len() == 0 && b.trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Stream(b) => b.size_hint(),
            Self::Tee(b) => b.inner.size_hint(),
            Self::Replay(b) => {
                let n: usize = b.data.as_slice().iter().map(Bytes::len).sum();
                SizeHint::with_exact(n as u64)
            }
        }
    }
}

/// What a [`TeeBody`] has copied so far.
#[derive(Debug, Default)]
struct Copy {
    data: Vec<Bytes>,
    len: usize,
    trailers: Option<HeaderMap>,
    /// The client's body ended and every byte was copied.
    complete: bool,
    /// Past the limit: nothing kept, no replay.
    overflowed: bool,
}

/// A client body passed on frame by frame, with a copy kept for replay.
pub struct TeeBody<B> {
    inner: B,
    copy: Arc<Mutex<Copy>>,
    limit: usize,
}

/// The other end of a [`TeeBody`]: makes replays once the body is complete.
#[derive(Clone)]
pub struct Replayable {
    copy: Arc<Mutex<Copy>>,
}

/// Wraps `body` so that a copy of up to `limit` bytes is kept.
pub fn tee<B: Body>(body: B, limit: usize) -> (TeeBody<B>, Replayable) {
    let copy = Arc::new(Mutex::new(Copy::default()));
    let done = body.is_end_stream();
    if done {
        lock(&copy).complete = true;
    }
    (
        TeeBody {
            inner: body,
            copy: copy.clone(),
            limit,
        },
        Replayable { copy },
    )
}

impl Replayable {
    /// The body again, if all of it went through and fit the limit.
    pub fn replay(&self) -> Option<ReplayBody> {
        let copy = lock(&self.copy);
        (copy.complete && !copy.overflowed).then(|| ReplayBody {
            data: copy.data.clone().into_iter(),
            trailers: copy.trailers.clone(),
        })
    }

    /// The body's length when it can be replayed (all of it went through
    /// and fit the limit).
    pub fn replayable_len(&self) -> Option<u64> {
        let copy = lock(&self.copy);
        (copy.complete && !copy.overflowed).then_some(copy.len as u64)
    }

    /// Whether the body has outgrown the limit (and so can never be
    /// replayed).
    pub fn overflowed(&self) -> bool {
        lock(&self.copy).overflowed
    }

    /// Whether the client has sent the whole body.
    pub fn complete(&self) -> bool {
        lock(&self.copy).complete
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for TeeBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                let mut copy = lock(&this.copy);
                if let Some(data) = frame.data_ref() {
                    if !copy.overflowed {
                        if copy.len + data.len() > this.limit {
                            copy.overflowed = true;
                            copy.data = Vec::new();
                        } else {
                            copy.len += data.len();
                            copy.data.push(data.clone());
                        }
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    copy.trailers = Some(trailers.clone());
                }
                if this.inner.is_end_stream() {
                    copy.complete = true;
                }
            }
            Poll::Ready(None) => lock(&this.copy).complete = true,
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A copied body, sent again.
pub struct ReplayBody {
    data: std::vec::IntoIter<Bytes>,
    trailers: Option<HeaderMap>,
}

impl ReplayBody {
    fn next_frame(&mut self) -> Option<Frame<Bytes>> {
        match self.data.next() {
            Some(d) => Some(Frame::data(d)),
            None => self.trailers.take().map(Frame::trailers),
        }
    }
}

fn lock(m: &Mutex<Copy>) -> std::sync::MutexGuard<'_, Copy> {
    // The copy is plain data; a panicking holder leaves it usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests;
