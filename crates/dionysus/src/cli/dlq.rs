//! `dlq list` and `dlq replay`: the command-line face of the dead-letter reader
//! (`consumer::dead_letters`), which the events API shares.
//!
//! This module owns the flags and what is printed; reading and re-sending belong to the
//! consumer's dead-letter module.

use crate::config::Config;
use crate::consumer::dead_letters::{self, DeadLetterError, DeadLetterFilter};
use crate::consumer::DeadLetterHeaders;

/// Which dead letters a command applies to.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct Filter {
    /// Only messages dead-lettered for this reason (e.g. database_rejected, unknown_model).
    #[arg(long)]
    reason: Option<String>,
    /// Only messages from this source topic.
    #[arg(long)]
    topic: Option<String>,
    /// Only messages at or after this offset of their source partition.
    #[arg(long, value_name = "OFFSET")]
    from_offset: Option<i64>,
    /// Only messages at or before this offset of their source partition.
    #[arg(long, value_name = "OFFSET")]
    to_offset: Option<i64>,
}

impl From<Filter> for DeadLetterFilter {
    fn from(filter: Filter) -> DeadLetterFilter {
        DeadLetterFilter {
            reason: filter.reason,
            topic: filter.topic,
            from_offset: filter.from_offset,
            to_offset: filter.to_offset,
        }
    }
}

/// A `dlq` command that failed: the reader's error, or one writing the output.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    /// Reading or replaying failed.
    #[error(transparent)]
    DeadLetters(#[from] DeadLetterError),
    /// Writing the output failed.
    #[error(transparent)]
    Output(#[from] std::io::Error),
}

/// `dlq list`: one line per matching dead letter, oldest first per partition.
pub(crate) async fn list(
    config: &Config,
    topic: String,
    filter: Filter,
    limit: usize,
    out: &mut (dyn std::io::Write + Send),
) -> Result<(), Failure> {
    let found = dead_letters::list(config, topic, filter.into(), limit).await?;
    for letter in &found.matching {
        let field = |name: &str| letter.header(name).unwrap_or_else(|| "-".to_owned());
        writeln!(
            out,
            "{}@{}  reason={}  source={}/{}@{}  key={}  error={}",
            letter.partition,
            letter.offset,
            field(DeadLetterHeaders::REASON),
            field(DeadLetterHeaders::TOPIC),
            field(DeadLetterHeaders::PARTITION),
            field(DeadLetterHeaders::OFFSET),
            letter.key.as_deref().map_or_else(|| "-".to_owned(), |key| String::from_utf8_lossy(key).into_owned()),
            field(DeadLetterHeaders::ERROR),
        )?;
    }
    writeln!(out, "{} dead letter(s) listed of {} read", found.matching.len(), found.read)?;
    Ok(())
}

/// `dlq replay`: re-publishes the matching dead letters to their source topics, then moves
/// the position of `group` past them (see `consumer::dead_letters::replay`).
pub(crate) async fn replay(
    config: &Config,
    topic: String,
    group: String,
    filter: Filter,
    limit: usize,
    out: &mut (dyn std::io::Write + Send),
) -> Result<(), Failure> {
    let replayed = dead_letters::replay(config, topic, group, filter.into(), limit).await?;
    for (partition, offset) in &replayed.skipped {
        writeln!(out, "skipped {partition}@{offset}: no source topic header")?;
    }
    writeln!(
        out,
        "replayed {} dead letter(s) of {} read; {} left out by the filters",
        replayed.sent, replayed.read, replayed.left_out
    )?;
    Ok(())
}
