//! The last stage of every request: what goes back to the client. An
//! upstream's response, in the client's HTTP version and without hop-by-hop
//! headers, recorded as its body streams; or an error response that names
//! the failure's reason (header `trellis-proxy-error`; for gRPC clients a
//! trailers-only response with the failure's gRPC status).

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body::Frame;
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use super::headers::{grpc_status, remove_hop_by_hop};
use super::{ProxyBody, RecordBody, Recorder};
use crate::error::{ProxyError, Verdict};

/// The upstream's response as the client gets it, or the failure's.
/// `first` is a frame already read from the body (to see a gRPC status in
/// trailers before deciding on a retry), sent first.
pub fn deliver(
    result: Result<(Response<Incoming>, Option<Frame<Bytes>>), ProxyError>,
    recorder: Recorder,
    client_h1: bool,
) -> Response<ProxyBody> {
    match result {
        Ok((rsp, first)) => respond(rsp, first, recorder, client_h1),
        Err(e) => fail(e, recorder),
    }
}

/// What every upstream response gets before it goes to the client: no
/// hop-by-hop headers (an upgrade's are its own), the client's HTTP
/// version, and its status (and gRPC status) recorded.
pub fn respond(
    mut rsp: Response<Incoming>,
    first: Option<Frame<Bytes>>,
    mut recorder: Recorder,
    client_h1: bool,
) -> Response<ProxyBody> {
    if rsp.status() != StatusCode::SWITCHING_PROTOCOLS {
        remove_hop_by_hop(rsp.headers_mut());
    }
    *rsp.version_mut() = if client_h1 {
        http::Version::HTTP_11
    } else {
        http::Version::HTTP_2
    };
    recorder.responded(rsp.status(), grpc_status(rsp.headers()));
    let mut first = first;
    rsp.map(|body| Either::Left(RecordBody::with_peeked(body, recorder, first.take())))
}

/// A request that failed: logged as its verdict says, answered with an
/// error response, recorded as failed.
pub fn fail(e: ProxyError, recorder: Recorder) -> Response<ProxyBody> {
    recorder
        .metrics()
        .tls_failure(recorder.labels.direction, &e);
    e.log_request(&recorder.labels.service);
    answer(e.verdict(), recorder, false)
}

/// A request the proxy refused before forwarding it (the inbound policy,
/// an ambiguous path): the refusal is the answer, recorded as complete.
pub fn refused(e: ProxyError, recorder: Recorder) -> Response<ProxyBody> {
    answer(e.verdict(), recorder, true)
}

fn answer(verdict: Verdict, mut recorder: Recorder, completed: bool) -> Response<ProxyBody> {
    let rsp = error_response(verdict, recorder.grpc);
    let grpc_status = recorder.grpc.then_some(verdict.grpc_status);
    recorder.responded(rsp.status(), grpc_status);
    recorder.errored(verdict.reason, verdict.fault.as_str());
    recorder.finish(completed);
    rsp
}

pub fn error_response(verdict: Verdict, grpc: bool) -> Response<ProxyBody> {
    let reason_header = HeaderValue::from_static(verdict.reason);
    let mut rsp = if grpc {
        // gRPC clients read a trailers-only response: status in headers.
        let mut r = Response::new(Either::Right(Full::new(Bytes::new())));
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from(verdict.grpc_status));
        h.insert("grpc-message", reason_header.clone());
        r
    } else {
        let body = format!("trellis-proxy: {}\n", verdict.reason);
        let mut r = Response::new(Either::Right(Full::new(Bytes::from(body))));
        *r.status_mut() = verdict.status;
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        r
    };
    rsp.headers_mut()
        .insert("trellis-proxy-error", reason_header);
    rsp
}
