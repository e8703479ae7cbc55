//! The command line's logs: a `tracing` subscriber writing to stderr, as text or as one JSON
//! object per line, filtered by `--log-level` or `RUST_LOG` (default `info`). librdkafka's
//! log lines reach it through the `log` bridge, once each.
//!
//! Installed only when the application has not installed a global subscriber of its own;
//! what the application chose is left alone. The events themselves belong to the modules
//! that emit them.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per event: `timestamp`, `level`, `target`, `message`, the event's
    /// fields and the names of its spans.
    Json,
}

/// Installs the command line's subscriber unless a global one is already set. `level` is an
/// `EnvFilter` directive (`debug`, `dionysus=debug,librdkafka=warn`, …) and wins over
/// `RUST_LOG`. Returns whether it installed one; a bad directive is reported as an error.
pub(crate) fn install(level: Option<&str>, format: LogFormat) -> Result<bool, String> {
    if tracing::dispatcher::has_been_set() {
        return Ok(false);
    }
    let filter = match level {
        Some(directive) => EnvFilter::try_new(directive).map_err(|error| {
            format!("--log-level {directive:?} is not a filter ({error}); use e.g. info, debug or dionysus=debug")
        })?,
        None => match std::env::var("RUST_LOG") {
            Ok(directive) if !directive.trim().is_empty() => EnvFilter::try_new(&directive).map_err(|error| {
                format!("RUST_LOG={directive:?} is not a filter ({error}); use e.g. info, debug or dionysus=debug")
            })?,
            _ => EnvFilter::new("info"),
        },
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    // `try_init` also routes the `log` records (librdkafka's, through rdkafka) into tracing;
    // it fails only when another subscriber or logger won the race, which is left alone.
    let installed = match format {
        LogFormat::Text => builder.try_init().is_ok(),
        LogFormat::Json => builder.event_format(Json).try_init().is_ok(),
    };
    Ok(installed)
}

/// Formats an event as one JSON object.
struct Json;

impl<S, N> FormatEvent<S, N> for Json
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, context: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let metadata = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut line = serde_json::Map::new();
        line.insert(
            "timestamp".to_owned(),
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true).into(),
        );
        line.insert("level".to_owned(), metadata.level().as_str().into());
        let target = fields.log_target.take().unwrap_or_else(|| metadata.target().to_owned());
        line.insert("target".to_owned(), target.into());
        if let Some(message) = fields.message.take() {
            line.insert("message".to_owned(), message.into());
        }
        for (name, value) in fields.values {
            line.entry(name).or_insert(value);
        }
        if let Some(scope) = context.event_scope() {
            let spans: Vec<serde_json::Value> = scope.from_root().map(|span| span.name().into()).collect();
            line.insert("spans".to_owned(), spans.into());
        }
        writeln!(writer, "{}", serde_json::Value::Object(line))
    }
}

/// An event's fields as JSON values; `message` and the `log` bridge's `log.target` apart,
/// the bridge's other bookkeeping fields dropped.
#[derive(Default)]
struct Fields {
    message: Option<String>,
    log_target: Option<String>,
    values: Vec<(String, serde_json::Value)>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: serde_json::Value) {
        match field.name() {
            "message" => self.message = Some(value.as_str().map_or_else(|| value.to_string(), str::to_owned)),
            "log.target" => self.log_target = value.as_str().map(str::to_owned),
            name if name.starts_with("log.") => {}
            name => self.values.push((name.to_owned(), value)),
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, value.to_string().into());
    }
}
