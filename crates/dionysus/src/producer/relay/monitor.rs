//! Seeing what the relay does: monitor events (dionysus-rb's `outbox_producer.*`
//! instrumentation, as `tracing` events and an optional [`RelayObserver`] callback), metrics
//! through the `metrics` crate (rendered for Prometheus by [`serve`]), periodic backlog
//! gauges, and liveness: a heartbeat that turns unhealthy when the loop stalls, exposed as a
//! file and an HTTP endpoint.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use diesel::sql_types::{BigInt, Double, Nullable};
use diesel_async::RunQueryDsl;
use tokio_util::sync::CancellationToken;

/// Something the relay did, as dionysus-rb's monitor names it (`outbox_producer.<name>`).
#[derive(Debug, Clone)]
pub enum RelayEvent<'a> {
    /// A worker started.
    Started {
        /// Its id.
        worker: &'a str,
    },
    /// A worker is stopping (shutdown requested).
    ShuttingDown {
        /// Its id.
        worker: &'a str,
    },
    /// A worker stopped and released its buckets.
    Stopped {
        /// Its id.
        worker: &'a str,
    },
    /// A worker hit an error outside a row (database, leases); it retries.
    Error {
        /// Its id.
        worker: &'a str,
        /// The error (a [`RelayError`](super::RelayError)); [`Report`](crate::error::Report)
        /// prints it with its causes.
        error: &'a (dyn std::error::Error + Send + Sync + 'static),
    },
    /// A row was published (acknowledged for every destination).
    Published {
        /// Outbox id.
        outbox_id: i64,
        /// Its topic.
        topic: &'a str,
    },
    /// A row failed; it is retried later, or parked.
    PublishingFailed {
        /// Outbox id.
        outbox_id: i64,
        /// Error kind.
        error_class: &'a str,
        /// Error message.
        error_message: &'a str,
        /// Whether it used up its attempts and is parked.
        parked: bool,
    },
    /// A worker with a backlog handed buckets to an idle worker, so the drain is shared
    /// (buckets follow the load).
    BucketsHandedOver {
        /// The worker that gave them.
        worker: &'a str,
        /// The worker that took them.
        receiver: &'a str,
        /// The buckets.
        buckets: &'a [i16],
    },
    /// A worker finished a loop iteration (`outbox_producer.heartbeat`).
    Heartbeat {
        /// Its id.
        worker: &'a str,
        /// Buckets it holds.
        buckets: usize,
    },
}

impl RelayEvent<'_> {
    /// The dionysus-rb monitor name, e.g. `outbox_producer.published`.
    pub fn name(&self) -> &'static str {
        match self {
            RelayEvent::Started { .. } => "outbox_producer.started",
            RelayEvent::ShuttingDown { .. } => "outbox_producer.shutting_down",
            RelayEvent::Stopped { .. } => "outbox_producer.stopped",
            RelayEvent::Error { .. } => "outbox_producer.error",
            RelayEvent::Published { .. } => "outbox_producer.published",
            RelayEvent::PublishingFailed { .. } => "outbox_producer.publishing_failed",
            RelayEvent::Heartbeat { .. } => "outbox_producer.heartbeat",
            RelayEvent::BucketsHandedOver { .. } => "outbox_producer.buckets_handed_over",
        }
    }
}

/// Receives every [`RelayEvent`] (in the worker's task: keep it quick).
pub trait RelayObserver: Send + Sync + 'static {
    /// Called for each event.
    fn on_event(&self, event: &RelayEvent<'_>);
}

/// Fans events out to `tracing` and the observer; keeps the liveness heartbeat.
#[derive(Clone, Default)]
pub(crate) struct Monitor {
    observer: Option<Arc<dyn RelayObserver>>,
    last_beat_ms: Arc<AtomicI64>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor").field("observer", &self.observer.is_some()).finish()
    }
}

impl Monitor {
    pub(crate) fn new(observer: Option<Arc<dyn RelayObserver>>) -> Monitor {
        Monitor { observer, last_beat_ms: Arc::new(AtomicI64::new(now_ms())) }
    }

    pub(crate) fn emit(&self, event: &RelayEvent<'_>) {
        match event {
            RelayEvent::Published { .. } | RelayEvent::Heartbeat { .. } => {
                tracing::trace!(event = event.name(), ?event);
            }
            RelayEvent::Error { .. } | RelayEvent::PublishingFailed { .. } => {
                tracing::debug!(event = event.name(), ?event)
            }
            _ => tracing::info!(event = event.name(), ?event),
        }
        if let RelayEvent::Heartbeat { .. } | RelayEvent::Started { .. } = event {
            self.last_beat_ms.store(now_ms(), Ordering::Relaxed);
        }
        if let Some(observer) = &self.observer {
            observer.on_event(event);
        }
    }

    /// Whether a worker completed a loop iteration within `stall`.
    pub(crate) fn healthy(&self, stall: Duration) -> bool {
        let age = now_ms() - AtomicI64::load(&self.last_beat_ms, Ordering::Relaxed);
        age <= i64::try_from(stall.as_millis()).unwrap_or(i64::MAX)
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[derive(diesel::QueryableByName)]
struct Backlog {
    #[diesel(sql_type = BigInt)]
    backlog: i64,
    #[diesel(sql_type = Nullable<Double>)]
    oldest_seconds: Option<f64>,
}

/// Backlog gauges, every `every`: unpublished rows and the age of the oldest one.
pub(crate) async fn gauges(pool: crate::db::Pool, every: Duration, shutdown: CancellationToken) {
    loop {
        if let Ok(mut conn) = crate::db::checkout(&pool).await {
            let query = diesel::sql_query(
                "SELECT count(*) AS backlog, \
                        extract(epoch FROM now() - min(created_at))::float8 AS oldest_seconds \
                 FROM dionysus_outbox WHERE published_at IS NULL AND failed_at IS NULL",
            );
            match query.get_result::<Backlog>(&mut conn).await {
                Ok(backlog) => {
                    metrics::gauge!("dionysus_outbox_backlog").set(backlog.backlog as f64);
                    metrics::gauge!("dionysus_outbox_oldest_unpublished_seconds")
                        .set(backlog.oldest_seconds.unwrap_or(0.0));
                }
                Err(error) => tracing::warn!("reading the outbox backlog failed: {}", crate::telemetry::Report(&error)),
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}
