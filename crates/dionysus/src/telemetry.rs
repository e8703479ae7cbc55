//! What dionysus tells operators: the metrics it records through the `metrics` crate
//! ([`METRICS`], described to the installed recorder by [`describe`]), the liveness file of
//! the relay and the consumer, why one is unhealthy ([`Unhealthy`]), and how errors are
//! written to logs ([`Report`], an error with its chain of sources). What "healthy" means is
//! the relay's and the consumer's.
//!
//! With the `metrics` feature (on by default) it also owns the process's Prometheus recorder
//! ([`prometheus`], shared by everything that serves `/metrics` and by applications that
//! render it themselves) and the `/metrics` + `/health` endpoint the relay's and the
//! consumer's `serve` start. Without it, metrics go to whatever recorder the application
//! installs, and health is asked of the relay and the consumer (`check_health`) or read from
//! the liveness file.
//!
//! Metric names: `dionysus_outbox_*` and `dionysus_relay_*` come from the relay,
//! `dionysus_consumer_*` from the consumer (`dionysus_consumer_messages_total`,
//! `dionysus_consumer_dead_letters_total`, `dionysus_consumer_batch_seconds`,
//! `dionysus_consumer_dead_letter_failures_total`, `dionysus_consumer_partition_stalled` (1
//! while a partition waits on a fault), `dionysus_consumer_offset_gaps_total` (skips in a
//! partition's offsets, by how their re-read ended), `dionysus_consumer_handler_errors_total` per handler
//! and reason, `dionysus_consumer_replies_total` and `dionysus_consumer_error_events_total`
//! (handlers' replies and error events written to the outbox), `dionysus_cascade_published_total`
//! (cascades' rows written with their batch), and `dionysus_consumer_lag`
//! per topic and partition from librdkafka's statistics); `dionysus_checkpoint_*` from
//! checkpointed handlers; `dionysus_reinit_runs_total`, `dionysus_reinit_replayed_messages_total`,
//! `dionysus_reinit_remaining_messages` and `dionysus_reinit_suppressed_total` from reinits;
//! `dionysus_delayer_*` from the delayer (copies re-sent, dead-lettered, failed sends,
//! lateness, copies held).
//!
//! The four stages of a message have a `tracing` span (at debug level) and a histogram each:
//! `dionysus.decode` (`dionysus_consumer_decode_seconds`, a batch's messages decoded and
//! checked), `dionysus.handle` (`dionysus_consumer_handle_seconds`, one handler call, by
//! handler), `dionysus.encode` (`dionysus_relay_encode_seconds`, a relay batch's rows loaded,
//! serialized and encoded) and `dionysus.publish` (`dionysus_relay_publish_seconds`, one
//! row's messages handed to the producer).

use std::path::PathBuf;
use std::sync::Arc;
#[cfg(feature = "metrics")]
use std::sync::OnceLock;
use std::time::Duration;

#[cfg(feature = "metrics")]
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

/// Why a running relay or consumer is unhealthy: the reason `/health` answers 503 with, and
/// the liveness file's removal logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Unhealthy {
    reason: String,
}

impl Unhealthy {
    pub(crate) fn new(reason: impl Into<String>) -> Unhealthy {
        Unhealthy { reason: reason.into() }
    }

    /// The reason, e.g. `partition v3_rentals/2 has not committed for 61 s`.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// Whether a loop is healthy, asked by the endpoint and the liveness file.
pub(crate) type Health = Arc<dyn Fn() -> Result<(), Unhealthy> + Send + Sync>;

/// Every metric dionysus emits: name, kind, unit and what it says (its `# HELP` line).
pub const METRICS: &[(&str, Kind, Unit, &str)] = &[
    (
        "dionysus_checkpoint_event_acknowledged_total",
        Kind::Counter,
        Unit::Count,
        "Events a checkpointed handler acknowledged and saved to the checkpoint log, by listener and topic.",
    ),
    (
        "dionysus_checkpoint_event_skipped_total",
        Kind::Counter,
        Unit::Count,
        "Events a checkpointed handler handled without acknowledging (not saved), by listener and topic.",
    ),
    (
        "dionysus_checkpoint_event_already_consumed_total",
        Kind::Counter,
        Unit::Count,
        "Events skipped without calling their checkpointed handler: already saved by this group, by listener and topic.",
    ),
    (
        "dionysus_checkpoint_event_failed_total",
        Kind::Counter,
        Unit::Count,
        "Events whose checkpointed handler failed every try (then recorded, dead-lettered or blocking), by listener and topic.",
    ),
    ("dionysus_outbox_backlog", Kind::Gauge, Unit::Count, "Outbox rows waiting to be published (not parked)."),
    (
        "dionysus_outbox_oldest_unpublished_seconds",
        Kind::Gauge,
        Unit::Seconds,
        "Age of the oldest outbox row waiting to be published.",
    ),
    (
        "dionysus_outbox_published_total",
        Kind::Counter,
        Unit::Count,
        "Outbox rows published and acknowledged by the broker.",
    ),
    (
        "dionysus_outbox_commit_to_ack_seconds",
        Kind::Histogram,
        Unit::Seconds,
        "Time from an outbox row's commit to the broker's acknowledgement of its message.",
    ),
    (
        "dionysus_outbox_failures_total",
        Kind::Counter,
        Unit::Count,
        "Failed publication attempts of outbox rows, by error class.",
    ),
    (
        "dionysus_outbox_parked_total",
        Kind::Counter,
        Unit::Count,
        "Outbox rows parked after their last attempt failed (see `outbox retry`).",
    ),
    ("dionysus_outbox_skipped_total", Kind::Counter, Unit::Count, "Outbox rows settled without a message, by reason."),
    ("dionysus_relay_batch_seconds", Kind::Histogram, Unit::Seconds, "Time the relay took per outbox batch."),
    (
        "dionysus_relay_encode_seconds",
        Kind::Histogram,
        Unit::Seconds,
        "Time the relay took to load, serialize and encode a batch's rows (span `dionysus.encode`).",
    ),
    (
        "dionysus_relay_publish_seconds",
        Kind::Histogram,
        Unit::Seconds,
        "Time the relay took to hand one row's messages to the producer (span `dionysus.publish`).",
    ),
    (
        "dionysus_relay_redelivered_behind_failure_total",
        Kind::Counter,
        Unit::Count,
        "Rows delivered after an earlier row of their key failed; they stay pending and go again.",
    ),
    (
        "dionysus_consumer_messages_total",
        Kind::Counter,
        Unit::Count,
        "Messages the consumer applied, by topic and partition.",
    ),
    (
        "dionysus_consumer_dead_letters_total",
        Kind::Counter,
        Unit::Count,
        "Messages sent to the dead-letter topic, by topic and partition.",
    ),
    ("dionysus_consumer_batch_seconds", Kind::Histogram, Unit::Seconds, "Time the consumer took per applied batch."),
    (
        "dionysus_consumer_decode_seconds",
        Kind::Histogram,
        Unit::Seconds,
        "Time the consumer took to decode and check a batch's messages (span `dionysus.decode`).",
    ),
    (
        "dionysus_consumer_handle_seconds",
        Kind::Histogram,
        Unit::Seconds,
        "Time a handler took per event, by handler (span `dionysus.handle`).",
    ),
    (
        "dionysus_consumer_dead_letter_failures_total",
        Kind::Counter,
        Unit::Count,
        "Failed sends to the dead-letter topic, by source topic and partition (the partition waits).",
    ),
    (
        "dionysus_consumer_offset_gaps_total",
        Kind::Counter,
        Unit::Count,
        "Skips in a partition's offsets by outcome: `refilled` (read again, the missing offsets came: nothing lost), `confirmed` (read again, really not in the log), `trusted` (taken without a re-read after a confirmed one), `unchecked` (could not be read again).",
    ),
    (
        "dionysus_consumer_handler_errors_total",
        Kind::Counter,
        Unit::Count,
        "Failures of handlers run after the commit, by handler and reason (the batch stays committed).",
    ),
    (
        "dionysus_delayer_resent_total",
        Kind::Counter,
        Unit::Count,
        "Delayed copies re-sent to their topic (and the next delay topic of their chain), by delay topic.",
    ),
    (
        "dionysus_delayer_dead_letters_total",
        Kind::Counter,
        Unit::Count,
        "Messages of a delay topic that were not delayed copies, sent to the dead-letter topic, by delay topic.",
    ),
    (
        "dionysus_delayer_send_errors_total",
        Kind::Counter,
        Unit::Count,
        "Failed re-sends of delayed copies (each retried with backoff), by delay topic.",
    ),
    (
        "dionysus_delayer_lateness_seconds",
        Kind::Histogram,
        Unit::Seconds,
        "How long after its due time a delayed copy was re-sent, by delay topic.",
    ),
    (
        "dionysus_delayer_held",
        Kind::Gauge,
        Unit::Count,
        "Delayed copies fetched and held until due (their partitions paused).",
    ),
    (
        "dionysus_consumer_replies_total",
        Kind::Counter,
        Unit::Count,
        "Replies of handlers written to the outbox (with their batch for `in_transaction` handlers).",
    ),
    (
        "dionysus_consumer_error_events_total",
        Kind::Counter,
        Unit::Count,
        "Error events (`event.error.<event>`) of failed handlers written to the outbox.",
    ),
    ("dionysus_reinit_runs_total", Kind::Counter, Unit::Count, "Reinits started or resumed, by group."),
    (
        "dionysus_reinit_replayed_messages_total",
        Kind::Counter,
        Unit::Count,
        "Messages a reinit replayed into the replica tables, by group.",
    ),
    (
        "dionysus_reinit_remaining_messages",
        Kind::Gauge,
        Unit::Count,
        "Messages a running reinit has still to replay before its targets, by group.",
    ),
    (
        "dionysus_reinit_suppressed_total",
        Kind::Counter,
        Unit::Count,
        "Replies and error events not written because their cause is replayed by a reinit, by topic.",
    ),
    (
        "dionysus_cascade_published_total",
        Kind::Counter,
        Unit::Count,
        "Outbox rows of related records republished by cascades, written with their batch.",
    ),
    (
        "dionysus_consumer_partition_stalled",
        Kind::Gauge,
        Unit::Count,
        "1 while a partition waits on a fault of ours (database, dead-letter topic), else 0.",
    ),
    (
        "dionysus_consumer_lag",
        Kind::Gauge,
        Unit::Count,
        "Messages of a partition not yet consumed, as librdkafka reports it.",
    ),
];

/// The kind of a metric in [`METRICS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution of observations.
    Histogram,
}

/// The unit of a metric in [`METRICS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A number of things.
    Count,
    /// Seconds.
    Seconds,
}

/// Describes every metric of [`METRICS`] to the installed `metrics` recorder (its `# HELP`
/// lines). Done when dionysus installs its Prometheus recorder; an application with a
/// recorder of its own calls it once that recorder is installed.
pub fn describe() {
    for &(name, kind, unit, help) in METRICS {
        let unit = match unit {
            Unit::Count => metrics::Unit::Count,
            Unit::Seconds => metrics::Unit::Seconds,
        };
        match kind {
            Kind::Counter => metrics::describe_counter!(name, unit, help),
            Kind::Gauge => metrics::describe_gauge!(name, unit, help),
            Kind::Histogram => metrics::describe_histogram!(name, unit, help),
        }
    }
}

/// The Prometheus recorder, installed (and the metrics described, see [`describe`]) on first
/// call. `None` when the application installed another `metrics` recorder first (its own
/// exporter then sees dionysus' metrics).
#[cfg(feature = "metrics")]
pub fn prometheus() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(handle) => {
                describe();
                Some(handle)
            }
            Err(error) => {
                tracing::warn!("not installing the Prometheus recorder ({error}); dionysus' /metrics stays empty");
                None
            }
        })
        .clone()
}

/// Keeps a liveness file: touched while `healthy()`, removed (with the reason logged once per
/// change of reason) when not, and on shutdown. Checked every `every`.
pub(crate) async fn health_file(path: PathBuf, healthy: Health, every: Duration, shutdown: CancellationToken) {
    let mut reported: Option<String> = None;
    loop {
        match healthy() {
            Ok(()) => {
                reported = None;
                if let Err(error) = tokio::fs::write(&path, chrono::Utc::now().to_rfc3339()).await {
                    tracing::warn!("cannot write the health file {}: {error}", path.display());
                }
            }
            Err(unhealthy) => {
                if reported.as_deref() != Some(unhealthy.reason()) {
                    tracing::error!("unhealthy, removing the health file {}: {unhealthy}", path.display());
                    reported = Some(unhealthy.reason);
                }
                let _ = tokio::fs::remove_file(&path).await;
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(every) => {}
        }
    }
    let _ = tokio::fs::remove_file(&path).await;
}

#[cfg(feature = "metrics")]
/// Limits of the `/metrics` + `/health` endpoint. It answers probes and scrapes: few
/// clients, tiny requests, so anything beyond these is refused rather than queued.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServeLimits {
    /// Connections served at once; one more is accepted and closed at once.
    pub(crate) connections: usize,
    /// How long a client may take to send its request head.
    pub(crate) request_head: Duration,
    /// How long one connection may last, request and response.
    pub(crate) connection: Duration,
    /// Bytes of request head buffered at most (larger heads get 431).
    pub(crate) request_bytes: usize,
    /// Pause after a failed `accept()` (e.g. out of file descriptors) before the next.
    pub(crate) accept_pause: Duration,
}

#[cfg(feature = "metrics")]
impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            connections: 256,
            request_head: Duration::from_secs(2),
            connection: Duration::from_secs(5),
            request_bytes: 16 * 1024,
            accept_pause: Duration::from_millis(100),
        }
    }
}

#[cfg(feature = "metrics")]
/// Serves `GET`/`HEAD` `/metrics` (Prometheus text, when a recorder handle is given) and
/// `/health` (200 while `healthy()`, else 503 with `unhealthy` and the reason as the body) on a bound
/// listener, over HTTP/1.1, until `shutdown`; other methods get 405, other paths 404.
///
/// Hostile clients cannot stop it: a failed `accept()` is logged and retried after a pause,
/// connections beyond [`ServeLimits::connections`] are closed at once, and each connection
/// is bounded in time and request size. It returns only on shutdown.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Option<PrometheusHandle>,
    healthy: Health,
    unhealthy: &'static str,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, metrics, healthy, unhealthy, ServeLimits::default(), shutdown).await;
    Ok(())
}

#[cfg(feature = "metrics")]
/// [`serve`] with explicit limits.
pub(crate) async fn serve_with(
    listener: tokio::net::TcpListener,
    metrics: Option<PrometheusHandle>,
    healthy: Health,
    unhealthy: &'static str,
    limits: ServeLimits,
    shutdown: CancellationToken,
) {
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "serving /metrics and /health");
    }
    let router = router(metrics, healthy, unhealthy);
    serve_router(listener, router, limits, "/metrics and /health", shutdown).await;
}

#[cfg(feature = "metrics")]
/// Serves `router` on a bound listener over HTTP/1.1 within `limits` until `shutdown`;
/// `what` names the server in the warnings about failed accepts.
pub(crate) async fn serve_router(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    limits: ServeLimits,
    what: &'static str,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.connections.max(1)));
    let mut accept_failures = 0u64;
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                accept_failures += 1;
                // Logged once per burst: a flood would otherwise log thousands of lines.
                if accept_failures.is_power_of_two() {
                    tracing::warn!(failures = accept_failures, "{what}: accept failed ({error}); retrying");
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(limits.accept_pause) => continue,
                }
            }
        };
        accept_failures = 0;
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // At the cap: closing at once keeps the backlog moving for the next client.
            drop(stream);
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let connection_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.request_head)
                .max_buf_size(limits.request_bytes.max(8192))
                .keep_alive(false);
            let connection = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                () = connection_shutdown.cancelled() => {}
                _ = tokio::time::timeout(limits.connection, connection) => {}
            }
        });
    }
}

#[cfg(feature = "metrics")]
fn router(metrics: Option<PrometheusHandle>, healthy: Health, unhealthy: &'static str) -> axum::Router {
    use axum::http::{header, Method, StatusCode};
    use axum::routing::get;
    type Reply = (StatusCode, [(header::HeaderName, &'static str); 1], String);
    fn reply(status: StatusCode, body: String) -> Reply {
        (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body)
    }
    let health = move || {
        let healthy = healthy.clone();
        async move {
            match healthy() {
                Ok(()) => reply(StatusCode::OK, "ok\n".to_owned()),
                Err(reason) => reply(StatusCode::SERVICE_UNAVAILABLE, format!("{unhealthy}: {reason}\n")),
            }
        }
    };
    let render = move || {
        let metrics = metrics.clone();
        async move {
            match metrics {
                Some(handle) => reply(StatusCode::OK, handle.render()),
                None => reply(StatusCode::NOT_FOUND, "metrics are not enabled\n".to_owned()),
            }
        }
    };
    axum::Router::new()
        .route("/health", get(health.clone()))
        .route("/healthz", get(health))
        .route("/metrics", get(render))
        .fallback(|method: Method| async move {
            if method == Method::GET || method == Method::HEAD {
                reply(StatusCode::NOT_FOUND, "try /health or /metrics\n".to_owned())
            } else {
                reply(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".to_owned())
            }
        })
}

/// An error with its chain of sources on one line, `outer: inner: innermost`, for logs and
/// the command line. Every error of the crate describes its own layer only and leaves its
/// source to this chain, so each message appears once.
///
/// ```
/// let error = std::io::Error::other("disk full");
/// assert_eq!(dionysus::error::Report(&error).to_string(), "disk full");
/// ```
#[derive(Clone, Copy)]
pub struct Report<'a, E: ?Sized = dyn std::error::Error + 'static>(pub &'a E);

impl<E: std::error::Error + ?Sized> std::fmt::Display for Report<'_, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}

impl<E: std::error::Error + ?Sized> std::fmt::Debug for Report<'_, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every metric the sources emit is described, and every described metric is emitted.
    #[test]
    fn every_metric_has_a_description() {
        fn sources(dir: &std::path::Path, found: &mut Vec<String>) {
            let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    sources(&path, found);
                } else if path.extension().is_some_and(|ext| ext == "rs") && !path.ends_with("telemetry.rs") {
                    found.push(std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
                }
            }
        }
        let mut found = Vec::new();
        sources(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut found);
        let pattern = regex::Regex::new(r#"metrics::(counter|gauge|histogram)!\(\s*"([a-z_]+)""#)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut emitted: Vec<(&str, &str)> = found
            .iter()
            .flat_map(|source| pattern.captures_iter(source))
            .map(|c| {
                let (_, [kind, name]) = c.extract();
                (name, kind)
            })
            .collect();
        emitted.sort_unstable();
        emitted.dedup();
        let mut described: Vec<(&str, &str)> = METRICS
            .iter()
            .map(|(name, kind, _, _)| {
                let kind = match kind {
                    Kind::Counter => "counter",
                    Kind::Gauge => "gauge",
                    Kind::Histogram => "histogram",
                };
                (*name, kind)
            })
            .collect();
        described.sort_unstable();
        assert_eq!(emitted, described);
    }

    /// The endpoint and the Prometheus recorder.
    #[cfg(feature = "metrics")]
    mod endpoint {
        use std::net::SocketAddr;

        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::TcpStream;

        use super::super::*;

        async fn start(healthy: Health) -> (SocketAddr, tokio::task::JoinHandle<()>, CancellationToken) {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let shutdown = CancellationToken::new();
            let server = tokio::spawn(serve_with(
                listener,
                None,
                healthy,
                "[unhealthy]",
                ServeLimits::default(),
                shutdown.clone(),
            ));
            (address, server, shutdown)
        }

        fn fine() -> Health {
            Arc::new(|| Ok(()))
        }

        /// Sends `parts` (pausing between them) and reads the response to its end.
        async fn exchange(address: SocketAddr, parts: &[&[u8]]) -> std::io::Result<String> {
            let mut stream = TcpStream::connect(address).await?;
            for (index, part) in parts.iter().enumerate() {
                if index > 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                stream.write_all(part).await?;
            }
            let mut response = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
                .await
                .map_err(|_| std::io::Error::other("no response within 5 s"))??;
            Ok(String::from_utf8_lossy(&response).into_owned())
        }

        fn status(response: &str) -> &str {
            response.split_whitespace().nth(1).unwrap_or("")
        }

        #[tokio::test]
        async fn answers_health_and_metrics_and_refuses_other_methods() {
            let (address, _server, shutdown) = start(fine()).await;
            let get = exchange(address, &[b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n"]).await.unwrap();
            assert_eq!(status(&get), "200", "{get}");
            assert!(get.ends_with("ok\n"), "{get}");
            let head = exchange(address, &[b"HEAD /health HTTP/1.1\r\nhost: x\r\n\r\n"]).await.unwrap();
            assert_eq!(status(&head), "200", "{head}");
            assert!(!head.ends_with("ok\n"), "HEAD has no body: {head}");
            for request in [
                &b"POST /health HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n"[..],
                b"DELETE /x HTTP/1.1\r\nhost: x\r\n\r\n",
            ] {
                let response = exchange(address, &[request]).await.unwrap();
                assert_eq!(status(&response), "405", "{response}");
            }
            let missing = exchange(address, &[b"GET /nothing HTTP/1.1\r\nhost: x\r\n\r\n"]).await.unwrap();
            assert_eq!(status(&missing), "404", "{missing}");
            let metrics = exchange(address, &[b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n"]).await.unwrap();
            assert_eq!(status(&metrics), "404", "no recorder given: {metrics}");
            shutdown.cancel();
        }

        #[tokio::test]
        async fn unhealthy_answers_503_with_the_reason() {
            let (address, _server, shutdown) =
                start(Arc::new(|| Err(Unhealthy::new("partition t/3 stalled for 61 s")))).await;
            let response = exchange(address, &[b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n"]).await.unwrap();
            assert_eq!(status(&response), "503", "{response}");
            assert!(response.ends_with("[unhealthy]: partition t/3 stalled for 61 s\n"), "{response}");
            shutdown.cancel();
        }

        /// A request split over several writes, and one with a 4 KB header, are answered.
        #[tokio::test]
        async fn split_and_larger_requests_are_answered() {
            let (address, _server, shutdown) = start(fine()).await;
            let response =
                exchange(address, &[b"GET /hea", b"lth HTTP/1.1\r\nho", b"st: x\r\n", b"\r\n"]).await.unwrap();
            assert_eq!(status(&response), "200", "{response}");
            let cookie = format!("GET /health HTTP/1.1\r\nhost: x\r\ncookie: {}\r\n\r\n", "c".repeat(4096));
            let response = exchange(address, &[cookie.as_bytes()]).await.unwrap();
            assert_eq!(status(&response), "200", "{response}");
            let huge = format!("GET /health HTTP/1.1\r\nhost: x\r\ncookie: {}\r\n\r\n", "c".repeat(64 * 1024));
            let response = exchange(address, &[huge.as_bytes()]).await.unwrap_or_default();
            assert_ne!(status(&response), "200", "a 64 KB head is refused: {response}");
            shutdown.cancel();
        }

        /// 2,000 idle connections and 300 junk requests: the server keeps running and `/health`
        /// answers again within seconds, the idle connections still open.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn health_answers_after_a_connection_flood() {
            let (address, server, shutdown) = start(fine()).await;
            let mut idle = Vec::new();
            for _ in 0..2000 {
                match TcpStream::connect(address).await {
                    Ok(stream) => idle.push(stream),
                    Err(error) => panic!("connecting the flood: {error}"),
                }
            }
            let junk: Vec<Vec<u8>> = (0..300u32)
                .map(|index| match index % 3 {
                    0 => format!("{index}\r\n\r\n\x00\x01garbage").into_bytes(),
                    1 => format!("GET /{} HTTP/1.1\r\n\r\n", "x".repeat(usize::try_from(index).unwrap() * 40))
                        .into_bytes(),
                    _ => b"GET /health HTTP/9.9\r\nhost\r\n\r\n".to_vec(),
                })
                .collect();
            let junk_sent = futures_util::future::join_all(
                junk.iter().map(|bytes| async move { exchange(address, &[bytes.as_slice()]).await }),
            )
            .await;
            assert_eq!(junk_sent.len(), 300);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            let answered = loop {
                if let Ok(response) = exchange(address, &[b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n"]).await {
                    if status(&response) == "200" {
                        break true;
                    }
                }
                if tokio::time::Instant::now() > deadline {
                    break false;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            assert!(answered, "/health did not answer within 15 s of the flood");
            assert!(!server.is_finished(), "the server stopped");
            drop(idle);
            shutdown.cancel();
        }

        /// The Prometheus text carries a `# HELP` line for each metric that has a value.
        #[test]
        fn prometheus_text_has_help_lines() {
            let handle = prometheus().unwrap_or_else(|| panic!("the recorder installs in this test binary"));
            metrics::counter!("dionysus_outbox_published_total").increment(1);
            metrics::gauge!("dionysus_consumer_lag", "topic" => "t", "partition" => "0").set(3.0);
            metrics::histogram!("dionysus_relay_batch_seconds").record(0.5);
            let text = handle.render();
            for name in ["dionysus_outbox_published_total", "dionysus_consumer_lag", "dionysus_relay_batch_seconds"] {
                assert!(text.contains(&format!("# HELP {name} ")), "{name}:\n{text}");
            }
        }
    }
}
