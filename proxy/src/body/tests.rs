// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;

use http_body_util::{BodyExt as _, StreamBody};

use super::*;

type Frames =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

fn body(chunks: &[&str], trailers: bool) -> Frames {
    let mut frames: Vec<Result<Frame<Bytes>, Infallible>> = chunks
        .iter()
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c.as_bytes()))))
        .collect();
    if trailers {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", "0".parse().unwrap());
        frames.push(Ok(Frame::trailers(t)));
    }
    StreamBody::new(futures_util::stream::iter(frames))
}

async fn drain<B: Body<Data = Bytes> + Unpin>(b: B) -> (Vec<u8>, Option<HeaderMap>)
where
    B::Error: std::fmt::Debug,
{
    let collected = b.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (collected.to_bytes().to_vec(), trailers)
}

#[tokio::test]
async fn a_small_body_passes_through_and_replays_whole_with_trailers() {
    let (tee, replayable) = tee(body(&["hello ", "world"], true), 64);
    assert!(
        replayable.replay().is_none(),
        "nothing to replay before the body went through"
    );
    let (sent, trailers) = drain(tee).await;
    assert_eq!(sent, b"hello world");
    assert!(trailers.is_some());
    assert!(replayable.complete());
    for _ in 0..2 {
        let again = ReqBody::Replay(replayable.replay().unwrap());
        assert_eq!(again.size_hint().exact(), Some(11));
        let (bytes, trailers) = drain(again).await;
        assert_eq!(bytes, b"hello world");
        assert_eq!(trailers.unwrap()["grpc-status"], "0");
    }
}

#[tokio::test]
async fn a_body_past_the_limit_streams_whole_but_never_replays() {
    let (tee, replayable) = tee(body(&["0123456789", "0123456789"], false), 15);
    let (sent, _) = drain(tee).await;
    assert_eq!(sent.len(), 20, "every byte still goes upstream");
    assert!(replayable.overflowed());
    assert!(replayable.replay().is_none());
}

#[tokio::test]
async fn an_incomplete_body_is_not_replayed() {
    let (mut tee, replayable) = tee(body(&["a", "b"], false), 64);
    let first = tee.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "a");
    assert!(!replayable.complete());
    assert!(replayable.replay().is_none());
}

#[tokio::test]
async fn the_empty_body_is_the_end_at_once() {
    let b = ReqBody::empty();
    assert!(b.is_end_stream());
    assert_eq!(drain(b).await.0, b"");
}
