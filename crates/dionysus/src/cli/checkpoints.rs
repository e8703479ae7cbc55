//! `events list|show|retry` and `failures list|show|retry|delete`: the checkpoint log from
//! the command line, as a table or JSON.
//!
//! This module owns the commands' flags and what they print; reading, retrying and deleting
//! rows is `checkpoint`'s.

use std::io::Write;

use crate::checkpoint::{CheckpointError, Checkpoints, EventFilter, EventRecord, FailureRecord, RetryOutcome};
use crate::config::Config;

/// The filters and page of a `list`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ListArgs {
    /// Rows to show, 1 to 1000.
    #[arg(long, default_value_t = crate::checkpoint::DEFAULT_LIMIT)]
    limit: u32,
    /// Rows to skip (newest first).
    #[arg(long, default_value_t = 0)]
    offset: u64,
    /// Only this entity id.
    #[arg(long, value_name = "ID")]
    entity_id: Option<String>,
    /// Only this topic.
    #[arg(long)]
    topic: Option<String>,
    /// Only this consumer group.
    #[arg(long, value_name = "ID")]
    group_id: Option<String>,
    /// Only this event type, e.g. rental_updated.
    #[arg(long, value_name = "TYPE")]
    event_type: Option<String>,
    /// Print one JSON object: `items`, `limit`, `offset`.
    #[arg(long)]
    json: bool,
}

impl ListArgs {
    /// Whether to print JSON.
    pub(crate) fn json(&self) -> bool {
        self.json
    }

    /// The filter, validated (a bad `--limit` is a usage mistake, found before any I/O).
    pub(crate) fn filter(&self) -> Result<EventFilter, CheckpointError> {
        let filter = EventFilter {
            limit: self.limit,
            offset: self.offset,
            entity_id: self.entity_id.clone(),
            topic: self.topic.clone(),
            group_id: self.group_id.clone(),
            event_type: self.event_type.clone(),
        };
        filter.validate()?;
        Ok(filter)
    }
}

/// What went wrong in one of these commands.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    /// The checkpoint log's error.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The database pool could not be built.
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    /// Writing the output failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// JSON could not be written.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// No row with this id.
    #[error("no {kind} with id {id}")]
    NotFound {
        /// `event` or `failure`.
        kind: &'static str,
        /// The id asked for.
        id: i64,
    },
    /// The retried handler failed again.
    #[error("{kind} {id}: the handler failed again: {error}")]
    RetryFailed {
        /// `event` or `failure`.
        kind: &'static str,
        /// The row's id.
        id: i64,
        /// The handler's error with its chain.
        error: String,
    },
}

fn store(config: &Config) -> Result<Checkpoints, Failure> {
    Ok(Checkpoints::new(crate::db::pool(&config.database_url, 2)?))
}

/// `events list`.
pub(crate) async fn list_events(
    config: &Config,
    filter: &EventFilter,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), Failure> {
    let page = store(config)?.events(filter).await?;
    if json {
        serde_json::to_writer(&mut *out, &page)?;
        writeln!(out)?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = page
        .items
        .iter()
        .map(|event| {
            vec![
                event.id.to_string(),
                event.topic.clone(),
                event.group_id.clone(),
                text(&event.entity_id),
                text(&event.event_type),
                event.event_time.map(|time| time.to_rfc3339()).unwrap_or_default(),
                position(event.partition, event.offset),
            ]
        })
        .collect();
    table(out, &["ID", "TOPIC", "GROUP", "ENTITY", "EVENT TYPE", "EVENT TIME", "PARTITION@OFFSET"], &rows)?;
    footer(out, rows.len(), filter, "event")
}

/// `failures list`.
pub(crate) async fn list_failures(
    config: &Config,
    filter: &EventFilter,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), Failure> {
    let page = store(config)?.failures(filter).await?;
    if json {
        serde_json::to_writer(&mut *out, &page)?;
        writeln!(out)?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = page
        .items
        .iter()
        .map(|failure| {
            vec![
                failure.id.to_string(),
                failure.topic.clone(),
                failure.group_id.clone(),
                text(&failure.entity_id),
                text(&failure.event_type),
                failure.attempts.to_string(),
                failure.last_failed_at.to_rfc3339(),
                shorten(&failure.error_message, 60),
            ]
        })
        .collect();
    table(out, &["ID", "TOPIC", "GROUP", "ENTITY", "EVENT TYPE", "ATTEMPTS", "LAST FAILED AT", "ERROR"], &rows)?;
    footer(out, rows.len(), filter, "failure")
}

/// `events show`.
pub(crate) async fn show_event(
    config: &Config,
    id: i64,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), Failure> {
    let event = store(config)?.event(id).await?.ok_or(Failure::NotFound { kind: "event", id })?;
    if json {
        serde_json::to_writer(&mut *out, &event)?;
        writeln!(out)?;
        return Ok(());
    }
    let EventRecord {
        id,
        topic,
        group_id,
        listener,
        entity_id,
        event_time,
        event_type,
        event_version,
        checksum,
        payload,
        key,
        partition,
        offset,
        created_at,
        ..
    } = event;
    fields(
        out,
        &[
            ("id", id.to_string()),
            ("topic", topic),
            ("group_id", group_id),
            ("listener", listener),
            ("entity_id", text(&entity_id)),
            ("event_time", event_time.map(|time| time.to_rfc3339()).unwrap_or_default()),
            ("event_type", text(&event_type)),
            ("event_version", text(&event_version)),
            ("checksum", checksum),
            ("key", text(&key)),
            ("partition@offset", position(partition, offset)),
            ("created_at", created_at.to_rfc3339()),
            ("payload", payload.to_string()),
        ],
    )
}

/// `failures show`.
pub(crate) async fn show_failure(
    config: &Config,
    id: i64,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), Failure> {
    let failure = store(config)?.failure(id).await?.ok_or(Failure::NotFound { kind: "failure", id })?;
    if json {
        serde_json::to_writer(&mut *out, &failure)?;
        writeln!(out)?;
        return Ok(());
    }
    let FailureRecord {
        id,
        topic,
        group_id,
        listener,
        entity_id,
        event_type,
        checksum,
        payload,
        error_class,
        error_message,
        error_chain,
        attempts,
        first_failed_at,
        last_failed_at,
        key,
        partition,
        offset,
        ..
    } = failure;
    fields(
        out,
        &[
            ("id", id.to_string()),
            ("topic", topic),
            ("group_id", group_id),
            ("listener", listener),
            ("entity_id", text(&entity_id)),
            ("event_type", text(&event_type)),
            ("checksum", checksum),
            ("key", text(&key)),
            ("partition@offset", position(partition, offset)),
            ("attempts", attempts.to_string()),
            ("first_failed_at", first_failed_at.to_rfc3339()),
            ("last_failed_at", last_failed_at.to_rfc3339()),
            ("error_class", error_class),
            ("error_message", error_message),
            ("error_chain", error_chain.join("\n  caused by: ")),
            ("payload", payload.to_string()),
        ],
    )
}

/// `events retry` and `failures retry`.
pub(crate) async fn retry(
    config: &Config,
    kind: &'static str,
    id: i64,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), Failure> {
    let store = store(config)?;
    let outcome = if kind == "event" { store.retry_event(id).await? } else { store.retry_failure(id).await? };
    if json {
        serde_json::to_writer(&mut *out, &outcome)?;
        writeln!(out)?;
    }
    match outcome {
        RetryOutcome::Succeeded { event_id } => {
            if !json {
                match (kind, event_id) {
                    ("failure", Some(event_id)) => {
                        writeln!(out, "failure {id} retried: the handler succeeded; saved as event {event_id}")?;
                    }
                    ("failure", None) => writeln!(out, "failure {id} retried: the handler succeeded; removed")?,
                    _ => writeln!(out, "event {id} retried: the handler succeeded")?,
                }
            }
            Ok(())
        }
        RetryOutcome::Failed { error } => Err(Failure::RetryFailed { kind, id, error }),
        _ => Err(Failure::NotFound { kind, id }),
    }
}

/// `failures delete`.
pub(crate) async fn delete_failure(config: &Config, id: i64, out: &mut (dyn Write + Send)) -> Result<(), Failure> {
    if store(config)?.delete_failure(id).await? {
        writeln!(out, "failure {id} deleted")?;
        Ok(())
    } else {
        Err(Failure::NotFound { kind: "failure", id })
    }
}

fn text(value: &Option<String>) -> String {
    value.clone().unwrap_or_default()
}

fn position(partition: Option<i32>, offset: Option<i64>) -> String {
    match (partition, offset) {
        (Some(partition), Some(offset)) => format!("{partition}@{offset}"),
        _ => String::new(),
    }
}

/// `text` on one line, at most `max` characters (an ellipsis marks a cut).
fn shorten(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() <= max && line.len() == text.len() {
        line.to_owned()
    } else {
        let cut: String = line.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

/// Columns padded to their widest cell.
fn table(out: &mut (dyn Write + Send), header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|title| title.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> =
            cells.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}", width = *width)).collect();
        padded.join("  ").trim_end().to_owned()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

fn footer(out: &mut (dyn Write + Send), shown: usize, filter: &EventFilter, kind: &str) -> Result<(), Failure> {
    if shown == 0 {
        writeln!(out, "no {kind}s")?;
    } else if shown == filter.limit as usize {
        writeln!(
            out,
            "{shown} {kind}(s) from offset {}; more with --offset {}",
            filter.offset,
            filter.offset + shown as u64
        )?;
    }
    Ok(())
}

fn fields(out: &mut (dyn Write + Send), fields: &[(&str, String)]) -> Result<(), Failure> {
    let width = fields.iter().map(|(name, _)| name.len()).max().unwrap_or_default();
    for (name, value) in fields {
        writeln!(out, "{name:<width$}  {value}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_errors_are_cut_to_one_line() {
        assert_eq!(shorten("short", 10), "short");
        assert_eq!(shorten("first line\nsecond", 20), "first line…");
        assert_eq!(shorten("abcdefghij", 5), "abcd…");
    }

    #[test]
    fn tables_pad_columns_to_their_widest_cell() {
        let mut out = Vec::new();
        table(&mut out, &["ID", "NAME"], &[vec!["1".into(), "a".into()], vec!["100".into(), "bb".into()]]).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "ID   NAME\n1    a\n100  bb\n");
    }
}
