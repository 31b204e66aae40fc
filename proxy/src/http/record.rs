//! The golden metrics of one request: started when the request arrives,
//! recorded when its response body ends, fails, or is dropped unfinished.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use tokio::time::Instant;

use super::headers::grpc_status;
use crate::metrics::{Classification, Metrics, ResponseLabels, RouteLabels};
use crate::trace::{Outcome, RequestSpan};

/// The golden-metric handles of one connection's requests. Most
/// connections send every request under the same labels: the metric
/// families' maps (which hash every label string) are then asked once per
/// connection and status, instead of twice per request.
#[derive(Default)]
pub struct Handles(Mutex<Option<Cached>>);

struct Cached {
    labels: RouteLabels,
    duration: Histogram,
    /// Counters by status and classification, as they were first needed.
    requests: Vec<(u16, Classification, Counter)>,
}

/// Statuses whose counters a connection keeps; others go to the family.
const MAX_CACHED_STATUSES: usize = 8;

impl Handles {
    fn record(
        &self,
        metrics: &Metrics,
        labels: RouteLabels,
        status_code: u16,
        classification: Classification,
        elapsed: f64,
    ) {
        // Plain handles: a panicking holder leaves them usable.
        let mut cached = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let c = match &mut *cached {
            Some(c) if c.labels == labels => c,
            slot => slot.insert(Cached {
                duration: metrics.http_duration.get_or_create_owned(&labels),
                labels,
                requests: Vec::new(),
            }),
        };
        c.duration.observe(elapsed);
        let known = c
            .requests
            .iter()
            .find(|(s, k, _)| *s == status_code && *k == classification);
        if let Some((_, _, counter)) = known {
            counter.inc();
            return;
        }
        let counter = metrics.http_requests.get_or_create_owned(&ResponseLabels {
            route: c.labels.clone(),
            status_code,
            classification,
        });
        counter.inc();
        if c.requests.len() < MAX_CACHED_STATUSES {
            c.requests.push((status_code, classification, counter));
        }
    }
}

/// Records one request's golden metrics once its response has ended.
pub struct Recorder {
    metrics: Arc<Metrics>,
    handles: Arc<Handles>,
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
    /// Starts timing a request labelled `labels`, traced as `span`; its
    /// metrics go through its connection's `handles`.
    pub fn start(
        metrics: Arc<Metrics>,
        handles: Arc<Handles>,
        labels: RouteLabels,
        grpc: bool,
        span: RequestSpan,
    ) -> Self {
        Self {
            metrics,
            handles,
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
        let status_code = self.status.as_u16();
        tracing::debug!(
            status = status_code,
            grpc_status = self.grpc_status,
            ?classification,
            duration_ms = elapsed * 1e3,
            "response"
        );
        self.handles.record(
            &self.metrics,
            self.labels,
            status_code,
            classification,
            elapsed,
        );
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Direction, Label};

    fn labels(route: &str) -> RouteLabels {
        RouteLabels {
            direction: Direction::Outbound,
            service: Label::new("web.demo:80"),
            route: Label::new(route),
            tls: true,
            peer: Label::new("spiffe://cluster.local/ns/demo/sa/web"),
        }
    }

    fn count(m: &Metrics, route: &str, status_code: u16, classification: Classification) -> u64 {
        m.http_requests
            .get_or_create(&ResponseLabels {
                route: labels(route),
                status_code,
                classification,
            })
            .get()
    }

    #[test]
    fn cached_handles_count_every_request_under_its_own_labels() {
        let m = Metrics::new();
        let h = Handles::default();
        let ok = Classification::Success;
        let fail = Classification::Failure;
        for _ in 0..3 {
            h.record(&m, labels("a"), 200, ok, 0.001);
        }
        h.record(&m, labels("a"), 503, fail, 0.002);
        // Another route replaces the cached labels; back again, still right.
        h.record(&m, labels("b"), 200, ok, 0.001);
        h.record(&m, labels("a"), 200, ok, 0.001);
        // More statuses than are kept: still counted.
        for status in 400..420 {
            h.record(&m, labels("a"), status, ok, 0.001);
            h.record(&m, labels("a"), status, ok, 0.001);
        }
        assert_eq!(count(&m, "a", 200, ok), 4);
        assert_eq!(count(&m, "a", 503, fail), 1);
        assert_eq!(count(&m, "b", 200, ok), 1);
        assert!((400..420).all(|s| count(&m, "a", s, ok) == 2));
        let observed = |route: &str| {
            let text = m.encode().unwrap_or_default();
            let needle = format!("route=\"{route}\"");
            text.lines()
                .filter(|l| l.starts_with("trellis_http_request_duration_seconds_count"))
                .filter(|l| l.contains(&needle))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum::<u64>()
        };
        assert_eq!(observed("a"), 3 + 1 + 1 + 40);
        assert_eq!(observed("b"), 1);
    }
}
