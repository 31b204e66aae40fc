//! The golden metrics of one request: started when the request arrives,
//! recorded when its response body ends, fails, or is dropped unfinished.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::headers::grpc_status;
use crate::metrics::{Classification, Metrics, ResponseLabels, RouteLabels};
use crate::trace::{Outcome, RequestSpan};

/// Records one request's golden metrics once its response has ended.
pub struct Recorder {
    metrics: Arc<Metrics>,
    pub labels: RouteLabels,
    pub start: Instant,
    /// The request is gRPC: its outcome is also read from `grpc-status`.
    pub grpc: bool,
    status: StatusCode,
    grpc_status: Option<u32>,
    /// The request's span: ends with the golden metrics, under their labels.
    pub span: RequestSpan,
    /// Set when the proxy answered with an error: its reason and fault.
    error: Option<(&'static str, &'static str)>,
}

impl Recorder {
    /// Starts timing a request labelled `labels`, traced as `span`.
    pub fn start(
        metrics: Arc<Metrics>,
        labels: RouteLabels,
        grpc: bool,
        span: RequestSpan,
    ) -> Self {
        Self {
            metrics,
            labels,
            start: Instant::now(),
            grpc,
            status: StatusCode::OK,
            grpc_status: None,
            span,
            error: None,
        }
    }

    /// The proxy answered with an error of this reason and fault.
    pub fn errored(&mut self, reason: &'static str, fault: &'static str) {
        self.error = Some((reason, fault));
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The response's status (and gRPC status, if it came in headers).
    pub fn responded(&mut self, status: StatusCode, grpc_status: Option<u32>) {
        self.status = status;
        self.grpc_status = grpc_status;
    }

    /// Records the request. `completed` is false when the response was cut
    /// short (an upstream or client error mid-body).
    pub fn finish(self, completed: bool) {
        let failed = !completed
            || self.status.is_server_error()
            || (self.grpc && self.grpc_status.is_some_and(|s| s != 0));
        let classification = if failed {
            Classification::Failure
        } else {
            Classification::Success
        };
        self.span.end(
            &self.labels,
            Outcome {
                status: self.status.as_u16(),
                grpc_status: self.grpc_status,
                failed,
                error: self.error,
            },
        );
        let elapsed = self.start.elapsed().as_secs_f64();
        self.metrics
            .http_duration
            .get_or_create(&self.labels)
            .observe(elapsed);
        let status_code = self.status.as_u16();
        tracing::debug!(
            status = status_code,
            grpc_status = self.grpc_status,
            ?classification,
            duration_ms = elapsed * 1e3,
            "response"
        );
        self.metrics
            .http_requests
            .get_or_create(&ResponseLabels {
                route: self.labels,
                status_code,
                classification,
            })
            .inc();
    }
}

pin_project_lite::pin_project! {
    /// A response body that records its request's metrics when it ends, fails,
    /// or is dropped unfinished.
    pub struct RecordBody {
        #[pin]
        inner: Incoming,
        recorder: Option<Recorder>,
        // A frame already read from `inner` (to see a gRPC status before
        // deciding on a retry), handed out first.
        peeked: Option<Frame<Bytes>>,
    }

    impl PinnedDrop for RecordBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(r) = this.recorder.take() {
                // hyper need not poll a body that is already at its end.
                let complete = this.peeked.is_none() && this.inner.is_end_stream();
                r.finish(complete);
            }
        }
    }
}

impl RecordBody {
    pub fn new(inner: Incoming, recorder: Recorder) -> Self {
        Self::with_peeked(inner, recorder, None)
    }

    pub fn with_peeked(inner: Incoming, recorder: Recorder, peeked: Option<Frame<Bytes>>) -> Self {
        Self {
            inner,
            recorder: Some(recorder),
            peeked,
        }
    }
}

impl Body for RecordBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let res = match this.peeked.take() {
            Some(frame) => Poll::Ready(Some(Ok(frame))),
            None => this.inner.poll_frame(cx),
        };
        match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(trailers), Some(r)) = (frame.trailers_ref(), this.recorder.as_mut()) {
                    if let Some(s) = grpc_status(trailers) {
                        r.grpc_status = Some(s);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(r) = this.recorder.take() {
                    r.finish(false);
                }
            }
            Poll::Ready(None) => {
                if let Some(r) = this.recorder.take() {
                    r.finish(true);
                }
            }
            Poll::Pending => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.peeked.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.peeked {
            None => self.inner.size_hint(),
            Some(_) => SizeHint::default(),
        }
    }
}
