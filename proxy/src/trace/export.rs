//! Finished spans on their way to the collector: a bounded queue that the
//! request path only ever `try_send`s into (a full queue drops the span and
//! counts it), and one task that takes spans off it in batches and exports
//! each batch over OTLP/gRPC. The request path never waits on the
//! collector: not to connect, not to send, not for room in the queue.

use std::time::Duration;

use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use tokio::sync::mpsc;
use trellis_core::shutdown::Shutdown;

use crate::metrics::TraceMetrics;

/// Spans waiting for export, at most: about 1 KB each, so a collector that
/// is down costs at most a few MB before spans are dropped.
pub const QUEUE_CAPACITY: usize = 2048;
/// Spans per export request, at most.
pub const MAX_BATCH: usize = 512;
/// How long a span may wait for its batch to fill.
pub const BATCH_DELAY: Duration = Duration::from_secs(1);
/// How long one export may take before its batch is given up (and counted
/// as dropped).
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// At shutdown, how long the spans still queued may take to leave.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Why spans were dropped: the `reason` label of
/// `trellis_trace_spans_dropped_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// The queue was full (the collector is slow or down).
    QueueFull,
    /// The collector refused the batch, or did not answer in time.
    ExportFailed,
    /// The proxy was shutting down.
    Shutdown,
}

impl Dropped {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::ExportFailed => "export_failed",
            Self::Shutdown => "shutdown",
        }
    }
}

/// The request path's end of the queue.
pub struct Queue {
    tx: mpsc::Sender<SpanData>,
    metrics: TraceMetrics,
}

impl Queue {
    /// Queues `span` for export, or drops and counts it: never waits.
    pub fn push(&self, span: SpanData) {
        use mpsc::error::TrySendError;
        match self.tx.try_send(span) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.metrics.dropped(Dropped::QueueFull, 1),
            Err(TrySendError::Closed(_)) => self.metrics.dropped(Dropped::Shutdown, 1),
        }
    }
}

/// A queue of `capacity` spans and the task that exports them with
/// `exporter` until `shutdown`, then flushes what is left.
pub fn start<E>(exporter: E, capacity: usize, metrics: TraceMetrics, shutdown: &Shutdown) -> Queue
where
    E: SpanExporter + 'static,
{
    let (tx, rx) = mpsc::channel(capacity);
    tokio::spawn(run(exporter, rx, metrics.clone(), shutdown.clone()));
    Queue { tx, metrics }
}

/// Batches: up to [`MAX_BATCH`] spans, or what came within [`BATCH_DELAY`]
/// of the first; one export at a time (the exporter's contract).
async fn run<E: SpanExporter>(
    mut exporter: E,
    mut rx: mpsc::Receiver<SpanData>,
    metrics: TraceMetrics,
    shutdown: Shutdown,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Whether the last export failed: a collector going down, and coming
    // back, is logged once each, not per batch.
    let mut failing = false;
    loop {
        let first = tokio::select! {
            n = rx.recv_many(&mut batch, MAX_BATCH) => n,
            () = shutdown.signaled() => break,
        };
        if first == 0 {
            break; // every sender is gone
        }
        let deadline = tokio::time::Instant::now() + BATCH_DELAY;
        while batch.len() < MAX_BATCH {
            let room = MAX_BATCH - batch.len();
            let more = tokio::select! {
                n = rx.recv_many(&mut batch, room) => n,
                () = tokio::time::sleep_until(deadline) => 0,
                () = shutdown.signaled() => 0,
            };
            if more == 0 {
                break;
            }
        }
        match export(&exporter, &mut batch, EXPORT_TIMEOUT, &metrics).await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("span export works again");
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "span export failed; spans are dropped (and counted) until the collector answers");
            }
            Ok(()) | Err(_) => {}
        }
    }
    // Shutdown: what is queued gets one last, short chance.
    rx.close();
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let _ = export(&exporter, &mut batch, FLUSH_TIMEOUT, &metrics).await;
    }
    let _ = exporter.shutdown();
}

/// Exports the spans of `batch` (leaving it empty), counting them as
/// exported or dropped.
async fn export<E: SpanExporter>(
    exporter: &E,
    batch: &mut Vec<SpanData>,
    limit: Duration,
    metrics: &TraceMetrics,
) -> Result<(), String> {
    let spans = std::mem::replace(batch, Vec::with_capacity(MAX_BATCH));
    let n = spans.len() as u64;
    let failed = match tokio::time::timeout(limit, exporter.export(spans)).await {
        Ok(Ok(())) => {
            metrics.exported.inc_by(n);
            return Ok(());
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {limit:?}"),
    };
    tracing::debug!(spans = n, error = %failed, "span export failed; spans dropped");
    metrics.dropped(Dropped::ExportFailed, n);
    Err(failed)
}
