//! The process's Prometheus recorder for the `metrics` crate, shared by everything that
//! serves `/metrics` (the relay) and by applications that render it themselves.
//!
//! Metric names: `dionysus_outbox_*` and `dionysus_relay_*` come from the relay,
//! `dionysus_consumer_*` from the consumer (`dionysus_consumer_messages_total`,
//! `dionysus_consumer_dead_letters_total`, `dionysus_consumer_batch_seconds`,
//! `dionysus_consumer_dead_letter_failures_total`, `dionysus_consumer_partition_stalled` (1
//! while a partition waits on a fault), `dionysus_consumer_handler_errors_total` per handler
//! and reason, and `dionysus_consumer_lag` per topic and partition from librdkafka's
//! statistics).
//!
//! Also how errors are written to logs: [`Report`], an error with its chain of sources.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Whether a loop is healthy, asked by the endpoint and the liveness file: `Err` carries the
/// reason, printed by a 503 `/health`.
pub(crate) type Health = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The Prometheus recorder, installed on first call. `None` when the application installed
/// another `metrics` recorder first (its own exporter then sees dionysus' metrics).
pub fn prometheus() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(handle) => Some(handle),
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
