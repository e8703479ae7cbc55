//! The process's Prometheus recorder for the `metrics` crate, shared by everything that
//! serves `/metrics` (the relay) and by applications that render it themselves.
//!
//! Metric names: `dionysus_outbox_*` and `dionysus_relay_*` come from the relay,
//! `dionysus_consumer_*` from the consumer (`dionysus_consumer_messages_total`,
//! `dionysus_consumer_dead_letters_total`, `dionysus_consumer_batch_seconds`, and
//! `dionysus_consumer_lag` per topic and partition from librdkafka's statistics).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

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
