//! The process's Prometheus recorder for the `metrics` crate, shared by everything that
//! serves `/metrics` (the relay) and by applications that render it themselves.
//!
//! Metric names: `dionysus_outbox_*` and `dionysus_relay_*` come from the relay,
//! `dionysus_consumer_*` from the consumer (`dionysus_consumer_messages_total`,
//! `dionysus_consumer_dead_letters_total`, `dionysus_consumer_batch_seconds`,
//! `dionysus_consumer_dead_letter_failures_total`, `dionysus_consumer_partition_stalled` (1
//! while a partition waits on a fault), and `dionysus_consumer_lag` per topic and partition
//! from librdkafka's statistics).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Whether a loop is healthy, asked by the endpoint and the liveness file: `Err` carries the
/// reason, printed by a 503 `/health`.
pub(crate) type Health = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Every metric dionysus emits: name, kind, unit and what it says (its `# HELP` line).
pub const METRICS: &[(&str, Kind, Unit, &str)] = &[
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
        "dionysus_consumer_dead_letter_failures_total",
        Kind::Counter,
        Unit::Count,
        "Failed sends to the dead-letter topic, by source topic and partition (the partition waits).",
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

/// Keeps a liveness file: touched while `healthy()`, removed when not and on shutdown.
/// Checked every `every`.
pub(crate) async fn health_file(path: PathBuf, healthy: Health, every: Duration, shutdown: CancellationToken) {
    loop {
        if healthy().is_ok() {
            if let Err(error) = tokio::fs::write(&path, chrono::Utc::now().to_rfc3339()).await {
                tracing::warn!("cannot write the health file {}: {error}", path.display());
            }
        } else {
            let _ = tokio::fs::remove_file(&path).await;
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(every) => {}
        }
    }
    let _ = tokio::fs::remove_file(&path).await;
}

/// Serves `GET /metrics` (Prometheus text, when a recorder handle is given) and `GET /health`
/// (200 while `healthy()`, else 503 with `unhealthy` and the reason as the body) on a bound
/// listener.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Option<PrometheusHandle>,
    healthy: Health,
    unhealthy: &'static str,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "serving /metrics and /health");
    }
    loop {
        let (mut socket, _) = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => accepted?,
        };
        let metrics = metrics.clone();
        let healthy = healthy.clone();
        tokio::spawn(async move {
            let mut request = [0_u8; 1024];
            let read = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut request)).await;
            let Ok(Ok(read)) = read else { return };
            let line = String::from_utf8_lossy(&request[..read]);
            let path = line.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = match path {
                "/health" | "/healthz" => match healthy() {
                    Ok(()) => ("200 OK", "ok\n".to_owned()),
                    Err(reason) => ("503 Service Unavailable", format!("{unhealthy}: {reason}\n")),
                },
                "/metrics" => match &metrics {
                    Some(handle) => ("200 OK", handle.render()),
                    None => ("404 Not Found", "metrics are not enabled\n".to_owned()),
                },
                _ => ("404 Not Found", "try /health or /metrics\n".to_owned()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        });
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
