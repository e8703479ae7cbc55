//! The `dionysus` command line, called from the application's own `main` so that the
//! application's declarations are linked in:
//!
//! ```no_run
//! #[tokio::main]
//! async fn main() -> std::process::ExitCode {
//!     dionysus::cli::run().await
//! }
//! ```
//!
//! Subcommands: `migrate`, `copy-migrations`, `check`, `replica-ddl`, `relay`, `consume`,
//! `delayer`, `reinit`, `genesis`, `serve`, `outbox stats|retry|prune`, `topics create|list`, `dlq list|replay`,
//! `events list|show|retry`, `failures list|show|retry|delete`, and with feature `avro`
//! `schemas register|check`. Settings come from
//! the environment (see `config`) and the global flags, which win. Errors say what was wrong
//! and how to fix it; the exit code is 1 for a failure and 2 for a usage mistake, which is
//! found before any I/O. `relay`, `consume`, `reinit` and `genesis` first check that the database is
//! migrated, the broker reachable and their topics there (`consume` also that its replica
//! tables fit their models), then run until done or until SIGTERM / Ctrl-C, finish their
//! in-flight batch and stop; `delayer` checks only the broker and its topics. `run` logs to stderr (module `logs`) unless the application
//! installed a `tracing` subscriber.
//!
//! This module owns the command line: parsing, start-up checks and what is printed. The work
//! itself belongs to the relay, the consumer, genesis and the migrations.

use std::ffi::OsString;
use std::io::Write;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use crate::config::Config;
use crate::consumer::replica::Replicas;
use crate::consumer::{Consumer, UnknownModel};
use crate::handle::Dionysus;
use crate::registry::Registry;
use crate::telemetry::Report;

use self::logs::LogFormat;

mod checkpoints;
mod dlq;
mod logs;
#[cfg(feature = "avro")]
mod schemas;

#[derive(Debug, Parser)]
#[command(
    name = "dionysus",
    version,
    about = "Keep data in sync between services through Kafka: outbox relay, genesis and tools."
)]
struct Args {
    /// PostgreSQL URL (default: $DATABASE_URL).
    #[arg(long, global = true, value_name = "URL")]
    database_url: Option<String>,
    /// Kafka brokers, host:port separated by `,` or `;` (default: $DIONYSUS_SEED_BROKER).
    #[arg(long, global = true, value_name = "HOST:PORT")]
    brokers: Option<String>,
    /// A librdkafka property for every Kafka client, e.g. security.protocol=ssl; repeatable
    /// (also: $DIONYSUS_KAFKA_<PROPERTY>).
    #[arg(long = "kafka-property", global = true, value_name = "KEY=VALUE", value_parser = kafka_property)]
    kafka_properties: Vec<(String, String)>,
    /// Which logs to print, e.g. debug or dionysus=debug,librdkafka=warn (default: $RUST_LOG,
    /// else info).
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,
    /// How to print logs.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply the framework's migrations (outbox, offsets, checkpoint log, genesis runs).
    Migrate,
    /// Write the framework's migrations into a migrations folder (existing ones are kept).
    CopyMigrations {
        /// The folder, e.g. `migrations`.
        dir: PathBuf,
    },
    /// Validate the declarations, check the database is migrated, the replica tables fit
    /// their models (each problem with the SQL that fixes it) and the topics exist on the
    /// broker with their declared partitions; warn about handlers waiting for an event no
    /// declared model emits.
    Check {
        /// Do not contact the broker.
        #[arg(long)]
        offline: bool,
    },
    /// Print the `CREATE TABLE` statement of each replica table this binary declares
    /// (`#[derive(Consume)]`): its columns with their types, and the key on the synced id.
    /// Apply it with e.g. `replica-ddl | psql "$DATABASE_URL"`, or paste it into a migration.
    ReplicaDdl {
        /// Only the replica kept in this table; repeatable.
        #[arg(long = "table", value_name = "TABLE")]
        tables: Vec<String>,
    },
    /// Publish the outbox until SIGTERM / Ctrl-C.
    ///
    /// Avro topics (feature `avro`) are written with the schema backend
    /// $DIONYSUS_SCHEMA_BACKEND (`registry`, `local` or `validation`; default `registry`) and
    /// the registry at $DIONYSUS_SCHEMA_REGISTRY_URL (default http://127.0.0.1:8081).
    Relay {
        /// Concurrent workers (default: $DIONYSUS_RELAY_WORKERS or 2). Batch sizes
        /// ($DIONYSUS_OUTBOX_BATCH_SIZE, largest batch, 1000) and idle pauses
        /// ($DIONYSUS_OUTBOX_WORKER_SLEEP_SECONDS, longest pause, 0.05) adapt to the backlog.
        #[arg(long)]
        workers: Option<usize>,
        /// Serve /metrics and /health on this address, e.g. 0.0.0.0:9394.
        #[arg(long, value_name = "ADDR")]
        serve: Option<SocketAddr>,
        /// Keep a liveness file at this path.
        #[arg(long, value_name = "PATH")]
        health_file: Option<PathBuf>,
        /// Create missing topics instead of failing their rows.
        #[arg(long)]
        auto_create_topics: bool,
    },
    /// Keep the replica tables in sync: consume topics until SIGTERM / Ctrl-C.
    ///
    /// Avro topics (feature `avro`) are read with the schema backend $DIONYSUS_SCHEMA_BACKEND
    /// (`registry`, `local` or `validation`; default `registry`) and the registry at
    /// $DIONYSUS_SCHEMA_REGISTRY_URL (default http://127.0.0.1:8081).
    Consume {
        /// A topic to read; repeatable (default: the topics of every `#[derive(Consume)]`
        /// replica and `#[dionysus::consume]` handler in this binary).
        #[arg(long = "topic", value_name = "TOPIC")]
        topics: Vec<String>,
        /// Consumer group id (default: $DIONYSUS_CONSUMER_GROUP_ID, else derived from the
        /// client id as dionysus-rb does).
        #[arg(long, value_name = "ID")]
        group: Option<String>,
        /// Messages of one partition applied per database transaction (default:
        /// $DIONYSUS_CONSUMER_BATCH_SIZE or 500).
        #[arg(long)]
        batch_size: Option<NonZeroUsize>,
        /// Where messages that cannot be applied go, with the reason in headers (default:
        /// $DIONYSUS_DEAD_LETTER_TOPIC or dionysus_dead_letters); created when missing.
        #[arg(long, value_name = "TOPIC")]
        dead_letter_topic: Option<String>,
        /// Bulk import mode for one of the topics: `_created` events are upserted without
        /// the timestamp guard, `_destroyed` events deleted; repeatable.
        #[arg(long = "import", value_name = "TOPIC")]
        imports: Vec<String>,
        /// Dead-letter a message whole when one of its events is of a model that has no
        /// replica (default: skip that event's records and apply the others, as dionysus-rb).
        #[arg(long)]
        dead_letter_unknown_models: bool,
        /// Take a PostgreSQL advisory lock `Dionysus-<message key>` per message while its
        /// batch is applied.
        #[arg(long)]
        processing_mutex: bool,
        /// Do not run `#[dionysus::consume]` handlers.
        #[arg(long)]
        no_handlers: bool,
        /// What a checkpointed handler's event becomes when the handler fails every try:
        /// record (in the failures table, and move on), dead_letter or block (default:
        /// $DIONYSUS_CHECKPOINT_ON_FAILURE or record; a handler's own `on_failure` wins).
        #[arg(long, value_name = "POLICY")]
        checkpoint_on_failure: Option<crate::config::FailurePolicy>,
        /// Serve /metrics and /health on this address, e.g. 0.0.0.0:9395.
        #[arg(long, value_name = "ADDR")]
        serve: Option<SocketAddr>,
        /// Keep a liveness file at this path.
        #[arg(long, value_name = "PATH")]
        health_file: Option<PathBuf>,
    },
    /// Re-send the delayed copies of `#[publish(..., delayed = "5m")]` when they are due:
    /// consume the `<topic>_delay_<delay>` topics until SIGTERM / Ctrl-C, holding each
    /// partition (paused) until its next copy is due, then re-send the copy to its topic (and
    /// to the next delay topic of its chain). Needs no database. Messages that are not
    /// delayed copies go to the dead-letter topic.
    Delayer {
        /// A delay topic to consume; repeatable (default: every delay topic of this binary's
        /// publications).
        #[arg(long = "topic", value_name = "TOPIC")]
        topics: Vec<String>,
        /// Consumer group id (default: <consumer group>_delayer).
        #[arg(long, value_name = "ID")]
        group: Option<String>,
        /// Where messages that are not delayed copies go, with the reason in headers (default:
        /// $DIONYSUS_DEAD_LETTER_TOPIC or dionysus_dead_letters); created when missing.
        #[arg(long, value_name = "TOPIC")]
        dead_letter_topic: Option<String>,
    },
    /// Rebuild the replica tables of a consumer group: reset the group to the earliest
    /// offsets (stored offsets and Kafka), replay its topics up to --until with replies, error
    /// events and cascades suppressed (handlers see `ctx.replaying()`), showing progress, then
    /// exit (or keep consuming with --consume). Stop every consumer of the group first.
    /// Interrupted (Ctrl-C, SIGTERM, a crash), it resumes where it stopped when run again;
    /// `consume` also keeps suppressing replies until the targets are reached.
    Reinit {
        /// The consumer group to reinitialize (required, so that a reinit is never aimed at
        /// the derived default by accident).
        #[arg(long, value_name = "ID")]
        group: String,
        /// A topic to replay; repeatable (default: the topics `consume` reads).
        #[arg(long = "topic", value_name = "TOPIC")]
        topics: Vec<String>,
        /// Where the replay stops: `now` (the end of every partition at the start) or
        /// TOPIC:PARTITION:OFFSET[,…] (the first offset consumed normally again; partitions
        /// not named stop at their end). An unfinished reinit resumes to its saved targets.
        #[arg(long, value_name = "now|TOPIC:PARTITION:OFFSET,...", default_value = "now", value_parser = until)]
        until: crate::consumer::Until,
        /// Once the targets are reached, keep consuming normally (replies written again)
        /// until SIGTERM / Ctrl-C, instead of exiting.
        #[arg(long)]
        consume: bool,
        /// Messages of one partition applied per database transaction (default:
        /// $DIONYSUS_CONSUMER_BATCH_SIZE or 500).
        #[arg(long)]
        batch_size: Option<NonZeroUsize>,
        /// Do not run `#[dionysus::consume]` handlers during the replay.
        #[arg(long)]
        no_handlers: bool,
    },
    /// Re-publish every record of a model to a topic (or its `_genesis` replica).
    Genesis {
        /// Model name, e.g. Rental.
        #[arg(long)]
        model: Option<String>,
        /// Topic, e.g. v3_rentals or v3_rentals_genesis.
        #[arg(long)]
        topic: Option<String>,
        /// Only records updated at or after this time (RFC 3339).
        #[arg(long, requires = "to")]
        from: Option<chrono::DateTime<chrono::Utc>>,
        /// Only records updated at or before this time (RFC 3339).
        #[arg(long, requires = "from")]
        to: Option<chrono::DateTime<chrono::Utc>>,
        /// Spread the run over this duration, e.g. 90m, 2d, 0.5d (default: as fast as possible).
        #[arg(long, value_name = "DURATION")]
        over: Option<String>,
        /// Records per batch.
        #[arg(long, default_value_t = 1000)]
        batch_size: usize,
        /// Skip soft-deleted records.
        #[arg(long)]
        visible_only: bool,
        /// Only records whose column equals the value (repeatable; every filter must hold).
        #[arg(long = "where", value_name = "COLUMN=VALUE", value_parser = column_equals)]
        conditions: Vec<(String, String)>,
        /// Resume an unfinished run by id instead of starting one.
        #[arg(long, value_name = "RUN_ID", conflicts_with_all = ["model", "topic"])]
        resume: Option<i64>,
    },
    /// Serve the events API and the operations console until SIGTERM / Ctrl-C: open
    /// http://127.0.0.1:9396/ in a browser. With a token, every route but /ping and /health
    /// needs `Authorization: Bearer <token>` (the console has a sign-in form); a non-loopback
    /// --listen address needs one.
    Serve {
        /// Address to listen on.
        #[arg(long, value_name = "ADDR", default_value = crate::http::DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// The API token (prefer the environment variable: a flag shows in the process list).
        #[arg(long, value_name = "TOKEN", env = "DIONYSUS_API_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Inspect and repair the outbox.
    #[command(subcommand)]
    Outbox(OutboxCommand),
    /// Create and inspect the declared topics.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// List and replay the messages the consumer dead-lettered.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// The checkpoint log: events checkpointed handlers acknowledged.
    #[command(subcommand)]
    Events(EventsCommand),
    /// The checkpoint log: events whose checkpointed handler failed.
    #[command(subcommand)]
    Failures(FailuresCommand),
    /// Register the Avro topics' schemas in the schema registry, or check them against it.
    #[cfg(feature = "avro")]
    #[command(subcommand)]
    Schemas(SchemasCommand),
}

#[derive(Debug, Subcommand)]
enum EventsCommand {
    /// Saved events, newest first.
    List(checkpoints::ListArgs),
    /// One event with its payload.
    Show {
        /// The event's id.
        id: i64,
        /// Print it as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the event's handler again on the stored message; its writes commit when it
    /// succeeds.
    Retry {
        /// The event's id.
        id: i64,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum FailuresCommand {
    /// Failed events, newest first: attempts, last failure, error.
    List(checkpoints::ListArgs),
    /// One failure with its error chain, metadata and payload.
    Show {
        /// The failure's id.
        id: i64,
        /// Print it as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the handler again on the stored message: on success the failure is removed and
    /// the event saved, in one transaction; on failure its attempts are counted.
    Retry {
        /// The failure's id.
        id: i64,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a failure without retrying it.
    Delete {
        /// The failure's id.
        id: i64,
    },
}

#[cfg(feature = "avro")]
#[derive(Debug, Subcommand)]
enum SchemasCommand {
    /// Register each Avro topic's value schema under `<topic>-value` and its key schema
    /// (if its key config has one) under `<topic>-key`; already registered ones keep their id.
    Register {
        /// The schema registry, e.g. http://127.0.0.1:8081.
        #[arg(long, env = "DIONYSUS_SCHEMA_REGISTRY_URL", value_name = "URL")]
        registry_url: String,
    },
    /// Report whether each local schema is compatible with its subject's latest version
    /// under the subject's compatibility level; exit 1 if one is not.
    Check {
        /// The schema registry, e.g. http://127.0.0.1:8081.
        #[arg(long, env = "DIONYSUS_SCHEMA_REGISTRY_URL", value_name = "URL")]
        registry_url: String,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Dead-lettered messages: reason, source topic/partition/offset, key and error.
    List {
        /// The dead-letter topic (default: $DIONYSUS_DEAD_LETTER_TOPIC or dionysus_dead_letters).
        #[arg(long, value_name = "TOPIC")]
        dead_letter_topic: Option<String>,
        #[command(flatten)]
        filter: dlq::Filter,
        /// At most this many messages.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Re-publish dead-lettered messages to their source topic with their original key and
    /// headers, once what rejected them is fixed. Reads from where the previous replay of
    /// the same --group stopped; messages the filters leave out are passed over too (replay
    /// them with another --group).
    Replay {
        /// The dead-letter topic (default: $DIONYSUS_DEAD_LETTER_TOPIC or dionysus_dead_letters).
        #[arg(long, value_name = "TOPIC")]
        dead_letter_topic: Option<String>,
        #[command(flatten)]
        filter: dlq::Filter,
        /// At most this many messages per run.
        #[arg(long, default_value_t = 10_000)]
        limit: usize,
        /// The consumer group whose position on the dead-letter topic records what was
        /// replayed (default: <dead-letter topic>-replay).
        #[arg(long, value_name = "ID")]
        group: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    /// Create the declared topics (and their genesis replicas) that the broker does not have,
    /// with their declared partitions and replication factor; existing ones are left alone.
    Create,
    /// The declared topics next to what the broker has: partition counts, missing topics,
    /// mismatches.
    List,
}

#[derive(Debug, Subcommand)]
enum OutboxCommand {
    /// Backlog, age of the oldest unpublished row, parked rows by error class.
    Stats {
        /// Print one JSON object: `backlog`, `retrying`, `oldest_unpublished_seconds`,
        /// `parked` (`total`, `by_error_class`).
        #[arg(long)]
        json: bool,
    },
    /// Make parked (failed) rows publishable again.
    Retry {
        /// Only this row.
        #[arg(long)]
        id: Option<i64>,
        /// Only rows that failed with this error class.
        #[arg(long)]
        error_class: Option<String>,
    },
    /// Delete published rows older than a duration.
    Prune {
        /// e.g. 3d, 12h.
        #[arg(long, value_name = "DURATION", default_value = "3d")]
        older_than: String,
    },
}

/// A failure of a subcommand, with what to do about it.
#[derive(Debug)]
struct Failure {
    message: String,
    /// The exit code: 1 for a failure, 2 for a usage mistake.
    code: u8,
}

impl Failure {
    /// A failure met while doing the work (exit code 1).
    fn new(message: impl Into<String>) -> Failure {
        Failure { message: message.into(), code: 1 }
    }

    /// A mistake in the command line, found before any I/O (exit code 2).
    fn usage(message: impl Into<String>) -> Failure {
        Failure { message: message.into(), code: 2 }
    }
}

/// An error becomes its whole chain, each layer once (`outer: inner: innermost`).
impl<E: std::error::Error + 'static> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure::new(Report(&error).to_string())
    }
}

/// The command line over a [`Dionysus`] handle (see [`Dionysus::cli`]): the handle's
/// configuration, overridden by the global flags.
#[derive(Debug, Clone)]
pub struct Cli {
    source: Source,
}

/// Where the command line takes its configuration and declarations from.
#[derive(Debug, Clone)]
enum Source {
    /// A handle the application built.
    Handle(Dionysus),
    /// The global handle ([`Dionysus::global`]), read once the arguments are parsed.
    Global,
    /// The environment, with these declarations.
    Environment(Arc<Registry>),
}

impl Cli {
    /// The command line over `handle`.
    pub fn new(handle: Dionysus) -> Cli {
        Cli { source: Source::Handle(handle) }
    }

    /// Parses the process arguments and runs the subcommand, logging to stderr (see
    /// `--log-level` and `--log-format`) unless the application installed a global `tracing`
    /// subscriber of its own.
    pub async fn run(&self) -> ExitCode {
        let mut out = std::io::stdout();
        let mut err = std::io::stderr();
        self.run_parsed(std::env::args_os(), &mut out, &mut err, CancellationToken::new(), true).await
    }

    /// Runs the command line given by `args`, writing to `out` and `err`; the long-running
    /// subcommands (`relay`, `consume`, `genesis`) also stop when `shutdown` is cancelled, as
    /// they do on SIGTERM / Ctrl-C: for applications that run the command line next to other
    /// work, and for tests.
    pub async fn run_until(
        &self,
        args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
        out: &mut (dyn Write + Send),
        err: &mut (dyn Write + Send),
        shutdown: CancellationToken,
    ) -> ExitCode {
        self.run_parsed(args, out, err, shutdown, false).await
    }

    /// Parses `args` and runs the subcommand; with `install_logs`, first installs the log
    /// subscriber the flags ask for.
    async fn run_parsed(
        &self,
        args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
        out: &mut (dyn Write + Send),
        err: &mut (dyn Write + Send),
        shutdown: CancellationToken,
        install_logs: bool,
    ) -> ExitCode {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let program = <[OsString]>::first(&args)
            .and_then(|first| std::path::Path::new(first).file_name())
            .map_or_else(|| "dionysus".to_owned(), |name| name.to_string_lossy().into_owned());
        let args = match Args::try_parse_from(args) {
            Ok(args) => args,
            Err(error) => {
                let _ = if error.use_stderr() { write!(err, "{error}") } else { write!(out, "{error}") };
                return if error.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
            }
        };
        if install_logs {
            if let Err(message) = logs::install(args.log_level.as_deref(), args.log_format) {
                let _ = writeln!(err, "error: {message}");
                return ExitCode::from(2);
            }
        }
        let outcome = match self.handle(&args) {
            Ok(handle) => execute(args, &program, &handle, out, shutdown).await,
            Err(failure) => Err(failure),
        };
        match outcome {
            Ok(()) => ExitCode::SUCCESS,
            Err(Failure { message, code }) => {
                // Every error is built with its secrets redacted; this is the last line of
                // defence for a text that came from elsewhere.
                let _ = writeln!(err, "error: {}", crate::config::redact(&message));
                ExitCode::from(code)
            }
        }
    }

    /// The handle the subcommand runs with: the source's, with the global flags applied.
    fn handle(&self, args: &Args) -> Result<Dionysus, Failure> {
        let base = match &self.source {
            Source::Handle(handle) => handle.clone(),
            Source::Global => Dionysus::global()?.clone(),
            Source::Environment(registry) => {
                Dionysus::with_registry(Config::from_env()?.with_env_kafka_properties(), registry.clone())
            }
        };
        let brokers = match &args.brokers {
            Some(brokers) => Some(
                crate::config::parse_brokers("--brokers", brokers)
                    .map_err(|error| Failure::usage(error.to_string().replace("--brokers=", "--brokers ")))?,
            ),
            None => None,
        };
        Ok(base.configure(|config| {
            if let Some(url) = &args.database_url {
                config.database_url = url.clone();
            }
            if let Some(brokers) = brokers {
                config.kafka.brokers = brokers;
            }
            config.kafka.properties.extend(args.kafka_properties.iter().cloned());
        }))
    }
}

/// Parses the process arguments and runs the subcommand with the global handle
/// ([`Dionysus::global`]: the installed one, or the environment and the binary's
/// declarations).
pub async fn run() -> ExitCode {
    Cli { source: Source::Global }.run().await
}

/// Runs the command line given by `args` against `registry`, with settings from the
/// environment and the flags, writing to `out` and `err`.
pub async fn run_with(
    args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
    registry: &Registry,
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
) -> ExitCode {
    run_until(args, registry, out, err, CancellationToken::new()).await
}

/// [`run_with`], also stopping the long-running subcommands when `shutdown` is cancelled.
pub async fn run_until(
    args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
    registry: &Registry,
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
    shutdown: CancellationToken,
) -> ExitCode {
    Cli { source: Source::Environment(Arc::new(registry.clone())) }.run_until(args, out, err, shutdown).await
}

fn kafka_property(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok((key.trim().to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, e.g. security.protocol=ssl, got {text:?}")),
    }
}

fn duration(flag: &str, text: &str) -> Result<Duration, Failure> {
    crate::config::parse_duration(flag, text, crate::config::Unit::Seconds)
        .map_err(|_| Failure::usage(format!("{flag} {text:?} is not a duration; use e.g. 90s, 30m, 12h, 2d or 0.5d")))
}

async fn execute(
    args: Args,
    program: &str,
    handle: &Dionysus,
    out: &mut (dyn Write + Send),
    shutdown: CancellationToken,
) -> Result<(), Failure> {
    let config = handle.config().clone();
    let registry = handle.registry();
    match args.command {
        Command::Migrate => {
            if args.database_url.is_none()
                && std::env::var_os("DATABASE_URL").is_none()
                && config.database_url == Config::default().database_url
            {
                return Err(Failure::usage(
                    "migrate needs to be told which database to migrate: set DATABASE_URL or pass --database-url \
                     postgres://user@host:port/database",
                ));
            }
            let applied = crate::migrate(&config.database_url).await?;
            if applied.is_empty() {
                writeln!(out, "the database is up to date")?;
            } else {
                writeln!(out, "applied {} migration(s): {}", applied.len(), applied.join(", "))?;
            }
        }
        Command::CopyMigrations { dir } => {
            let report = crate::copy_migrations(&dir)?;
            for path in &report.created {
                writeln!(out, "created {}", path.display())?;
            }
            for path in &report.skipped {
                writeln!(out, "exists  {}", path.display())?;
            }
        }
        Command::Check { offline } => check(&config, registry, offline, out).await?,
        Command::ReplicaDdl { tables } => replica_ddl(&config, Replicas::global(), &tables, out)?,
        Command::Relay { workers, serve, health_file, auto_create_topics } => {
            let declared: Vec<String> = if auto_create_topics {
                Vec::new()
            } else {
                crate::kafka::TopicSpec::for_registry(registry).into_iter().map(|spec| spec.name).collect()
            };
            preflight(&config, program, &declared, "relay").await?;
            let mut builder = crate::producer::relay::Relay::builder(config)
                .registry(handle.registry_arc())
                .auto_create_topics(auto_create_topics);
            if let Some(workers) = workers {
                builder = builder.workers(workers);
            }
            if let Some(address) = serve {
                builder = builder.serve(address);
            }
            if let Some(path) = health_file {
                builder = builder.health_file(path);
            }
            let relay = builder.build()?;
            listen_for_signals(&shutdown);
            writeln!(out, "relay running; stop with Ctrl-C or SIGTERM")?;
            relay.run(shutdown).await?;
        }
        Command::Consume {
            topics,
            group,
            batch_size,
            dead_letter_topic,
            imports,
            dead_letter_unknown_models,
            processing_mutex,
            no_handlers,
            checkpoint_on_failure,
            serve,
            health_file,
        } => {
            let mut config = config;
            if let Some(policy) = checkpoint_on_failure {
                config.consumer.checkpoint_on_failure = policy;
            }
            if let Some(group) = group {
                config.kafka.group_id = Some(group);
            }
            if let Some(size) = batch_size {
                config.consumer.batch_size = size.get();
            }
            if let Some(topic) = dead_letter_topic {
                config.consumer.dead_letter_topic = topic;
            }
            let topics = consume_topics(&config, program, registry, topics, &imports, out).await?;
            let unknown_model = if dead_letter_unknown_models { UnknownModel::DeadLetter } else { UnknownModel::Skip };
            let mut builder = Consumer::builder(config)
                .registry(handle.registry_arc())
                .unknown_model(unknown_model)
                .processing_mutex(processing_mutex)
                .handlers(!no_handlers);
            if let Some(address) = serve {
                builder = builder.serve(address);
            }
            if let Some(path) = health_file {
                builder = builder.health_file(path);
            }
            for topic in &topics {
                builder = builder.topic(topic);
            }
            for topic in imports {
                builder = builder.import(topic);
            }
            let consumer = builder.build()?;
            consumer.check_tables().await?;
            listen_for_signals(&shutdown);
            writeln!(
                out,
                "consuming {} as group {}; stop with Ctrl-C or SIGTERM",
                topics.join(", "),
                consumer.group()
            )?;
            consumer.run(shutdown).await?;
            writeln!(out, "consumer stopped")?;
        }
        Command::Delayer { topics, group, dead_letter_topic } => {
            let mut config = config;
            if let Some(topic) = dead_letter_topic {
                config.consumer.dead_letter_topic = topic;
            }
            let mut builder = Dionysus::with_registry(config.clone(), handle.registry_arc()).delayer();
            for topic in topics {
                builder = builder.topic(topic);
            }
            if let Some(group) = group {
                builder = builder.group(group);
            }
            let delayer = builder.build()?;
            let known = registry.topic_names();
            let existing = topics_exist(&config, program, &delayer.topics(), &known, None).await?;
            let dead_letters = &config.consumer.dead_letter_topic;
            if !existing.contains_key(dead_letters) {
                let spec = crate::kafka::TopicSpec { name: dead_letters.clone(), partitions: 1, replication_factor: 1 };
                crate::kafka::create_topics(&config.kafka, &[spec]).await?;
                writeln!(out, "created the dead-letter topic {dead_letters}")?;
            }
            listen_for_signals(&shutdown);
            writeln!(
                out,
                "delaying {} as group {}; stop with Ctrl-C or SIGTERM",
                delayer.topics().join(", "),
                delayer.group()
            )?;
            delayer.run(shutdown).await?;
            writeln!(out, "delayer stopped")?;
        }
        Command::Reinit { group, topics, until, consume, batch_size, no_handlers } => {
            let mut config = config;
            config.kafka.group_id = Some(group);
            if let Some(size) = batch_size {
                config.consumer.batch_size = size.get();
            }
            let topics = consume_topics(&config, program, registry, topics, &[], out).await?;
            let mut builder = Consumer::builder(config).registry(handle.registry_arc()).handlers(!no_handlers);
            for topic in &topics {
                builder = builder.topic(topic);
            }
            let consumer = builder.build()?;
            consumer.check_tables().await?;
            listen_for_signals(&shutdown);
            writeln!(out, "reinitializing group {} on {} up to {until}", consumer.group(), topics.join(", "))?;
            out.flush()?;
            let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                indicatif::ProgressBar::new(0)
            } else {
                // Not a terminal: the reinit logs its progress every 10 s instead.
                indicatif::ProgressBar::hidden()
            };
            let bar = bar.with_style(
                indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} messages  {per_sec}  ETA {eta}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let then = if consume { crate::consumer::AfterReinit::Consume } else { crate::consumer::AfterReinit::Exit };
            let report = consumer.reinit(&until, then, &ReinitBar(bar), shutdown).await?;
            let verb = if report.resumed { "resumed" } else { "started" };
            if report.completed {
                writeln!(
                    out,
                    "reinit of group {} completed ({verb}): {} message(s) replayed now, {} in all",
                    consumer.group(),
                    report.replayed,
                    report.total
                )?;
            } else {
                writeln!(
                    out,
                    "reinit of group {} stopped after {} message(s) ({verb}); run it again to resume",
                    consumer.group(),
                    report.replayed
                )?;
            }
        }
        Command::Genesis { model, topic, from, to, over, batch_size, visible_only, conditions, resume } => {
            let request = match resume {
                Some(_) => None,
                None => {
                    let (Some(model), Some(topic)) = (model, topic) else {
                        return Err(Failure::usage("genesis needs --model and --topic (or --resume RUN_ID)"));
                    };
                    let over = over.as_deref().map(|text| duration("--over", text)).transpose()?.unwrap_or_default();
                    Some(crate::producer::genesis::GenesisRequest {
                        model,
                        topic,
                        window: from.zip(to),
                        over,
                        batch_size,
                        visible_only,
                        conditions,
                    })
                }
            };
            let topics: Vec<String> = request.iter().map(|request| request.topic.clone()).collect();
            preflight(&config, program, &topics, "genesis").await?;
            let pool = crate::db::pool(&config.database_url, 2)?;
            let genesis = crate::producer::genesis::Genesis::new(config, handle.registry_arc(), pool)?;
            let run_id = match (resume, request) {
                (Some(id), _) => id,
                (None, None) => return Err(Failure::usage("genesis needs --model and --topic (or --resume RUN_ID)")),
                (None, Some(request)) => {
                    let run = genesis.start(&request).await?;
                    writeln!(out, "genesis run {} started: {} record(s)", run.id, run.total_count.unwrap_or(0))?;
                    run.id
                }
            };
            let progress = indicatif::ProgressBar::new(0).with_style(
                indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} records  {per_sec}  ETA {eta}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            listen_for_signals(&shutdown);
            let report = genesis.run(run_id, &Bar(progress), &shutdown).await?;
            if report.completed {
                writeln!(out, "genesis run {run_id} completed: {} record(s) published", report.published)?;
            } else {
                writeln!(out, "genesis run {run_id} stopped; resume with --resume {run_id}")?;
            }
        }
        Command::Serve { listen, token } => {
            let api = crate::http::Api::new(config.clone())?.with_token(token);
            api.check_address(listen).map_err(|error| Failure::usage(Report(&error).to_string()))?;
            migrated(&config, program).await?;
            let listener = tokio::net::TcpListener::bind(listen).await.map_err(|error| {
                Failure::new(format!("cannot listen on {listen}: {error}; pick another address with --listen"))
            })?;
            let address = listener.local_addr()?;
            listen_for_signals(&shutdown);
            writeln!(out, "serving the events API and the console on http://{address}/; stop with Ctrl-C or SIGTERM")?;
            out.flush()?;
            crate::http::serve(listener, api, shutdown).await?;
        }
        Command::Events(EventsCommand::List(list)) => {
            let filter = list.filter().map_err(|error| Failure::usage(error.to_string()))?;
            checkpoints::list_events(&config, &filter, list.json(), out).await?;
        }
        Command::Events(EventsCommand::Show { id, json }) => checkpoints::show_event(&config, id, json, out).await?,
        Command::Events(EventsCommand::Retry { id, json }) => {
            checkpoints::retry(&config, "event", id, json, out).await?
        }
        Command::Failures(FailuresCommand::List(list)) => {
            let filter = list.filter().map_err(|error| Failure::usage(error.to_string()))?;
            checkpoints::list_failures(&config, &filter, list.json(), out).await?;
        }
        Command::Failures(FailuresCommand::Show { id, json }) => {
            checkpoints::show_failure(&config, id, json, out).await?;
        }
        Command::Failures(FailuresCommand::Retry { id, json }) => {
            checkpoints::retry(&config, "failure", id, json, out).await?;
        }
        Command::Failures(FailuresCommand::Delete { id }) => checkpoints::delete_failure(&config, id, out).await?,
        Command::Outbox(command) => outbox(&config, command, out).await?,
        Command::Topics(command) => topics(&config, registry, command, out).await?,
        Command::Dlq(DlqCommand::List { dead_letter_topic, filter, limit }) => {
            let topic = dead_letter_topic.unwrap_or_else(|| config.consumer.dead_letter_topic.clone());
            dlq::list(&config, topic, filter, limit, out).await?;
        }
        #[cfg(feature = "avro")]
        Command::Schemas(SchemasCommand::Register { registry_url }) => {
            schemas::run(registry, &registry_url, schemas::Action::Register, out).await?;
        }
        #[cfg(feature = "avro")]
        Command::Schemas(SchemasCommand::Check { registry_url }) => {
            schemas::run(registry, &registry_url, schemas::Action::Check, out).await?;
        }
        Command::Dlq(DlqCommand::Replay { dead_letter_topic, filter, limit, group }) => {
            let topic = dead_letter_topic.unwrap_or_else(|| config.consumer.dead_letter_topic.clone());
            let group = group.unwrap_or_else(|| format!("{topic}-replay"));
            dlq::replay(&config, topic, group, filter, limit, out).await?;
        }
    }
    Ok(())
}

/// Parses `--where column=value`.
fn column_equals(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((column, value)) if !column.trim().is_empty() => Ok((column.trim().to_owned(), value.to_owned())),
        _ => Err(format!("expected COLUMN=VALUE, e.g. account_id=7, got `{text}`")),
    }
}

/// A genesis run drawn as a progress bar.
struct Bar(indicatif::ProgressBar);

impl crate::producer::genesis::Progress for Bar {
    fn started(&self, total: u64, done: u64) {
        self.0.set_length(total);
        self.0.set_position(done);
    }

    fn advanced(&self, records: u64) {
        self.0.inc(records);
    }

    fn finished(&self) {
        self.0.finish();
    }
}

/// Parses `--until`.
fn until(text: &str) -> Result<crate::consumer::Until, String> {
    text.parse().map_err(|error: crate::consumer::UntilError| error.to_string())
}

/// A reinit drawn as a progress bar.
struct ReinitBar(indicatif::ProgressBar);

impl crate::consumer::ReinitProgress for ReinitBar {
    fn started(&self, total: u64, done: u64) {
        self.0.set_length(total);
        self.0.set_position(done);
        self.0.reset_eta();
    }

    fn advanced(&self, done: u64) {
        self.0.set_position(done);
    }

    fn finished(&self) {
        self.0.finish();
    }
}

/// Cancels `shutdown` on SIGTERM or Ctrl-C.
fn listen_for_signals(shutdown: &CancellationToken) {
    let cancel = shutdown.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = terminate => {}
            () = cancel.cancelled() => return,
        }
        tracing::info!("shutdown requested");
        cancel.cancel();
    });
}

/// The topics `consume` reads, checked before the consumer starts: the database is reachable
/// and migrated, the broker is reachable and has every topic (a missing one is reported with
/// the closest known name); a missing dead-letter topic is created.
async fn consume_topics(
    config: &Config,
    program: &str,
    registry: &Registry,
    requested: Vec<String>,
    imports: &[String],
    out: &mut (dyn Write + Send),
) -> Result<Vec<String>, Failure> {
    let mut declared: Vec<String> = Replicas::global()
        .iter()
        .map(|replica| replica.topic.to_owned())
        .chain(crate::consumer::handlers().map(|handler| handler.topic.to_owned()))
        .collect();
    declared.sort_unstable();
    declared.dedup();
    let topics = if requested.is_empty() { declared.clone() } else { requested };
    if topics.is_empty() {
        return Err(Failure::usage(
            "no topics to consume: this binary links no #[derive(Consume)] replica and no #[dionysus::consume] \
             handler; name the topics with --topic"
                .to_owned(),
        ));
    }
    if let Some(import) = imports.iter().find(|import| !topics.contains(import)) {
        return Err(Failure::usage(format!(
            "--import {import}: not a consumed topic; consumed: {} (add it with --topic)",
            topics.join(", ")
        )));
    }
    let known: Vec<String> = declared.iter().cloned().chain(registry.topic_names()).collect();
    let existing = preflight_with(config, program, &topics, &known, None).await?;
    let dead_letters = &config.consumer.dead_letter_topic;
    if !existing.contains_key(dead_letters) {
        let spec = crate::kafka::TopicSpec { name: dead_letters.clone(), partitions: 1, replication_factor: 1 };
        crate::kafka::create_topics(&config.kafka, &[spec]).await?;
        writeln!(out, "created the dead-letter topic {dead_letters}")?;
    }
    Ok(topics)
}

/// The start-up checks of a long-running subcommand: the database is reachable and has the
/// framework's migrations, the broker is reachable, and each of `topics` exists on it. Each
/// failure says the fix.
async fn preflight(config: &Config, program: &str, topics: &[String], subcommand: &str) -> Result<(), Failure> {
    let flag = (subcommand == "relay").then_some("--auto-create-topics");
    preflight_with(config, program, topics, &[], flag).await.map(drop)
}

/// [`preflight`], with more names to suggest for a misspelt topic and the flag that would
/// create missing topics instead; returns the broker's topics with their partition counts.
async fn preflight_with(
    config: &Config,
    program: &str,
    topics: &[String],
    known: &[String],
    create_flag: Option<&str>,
) -> Result<std::collections::BTreeMap<String, i32>, Failure> {
    migrated(config, program).await?;
    topics_exist(config, program, topics, known, create_flag).await
}

/// The broker's part of [`preflight_with`]: the broker answers and each of `topics` exists
/// on it; returns the broker's topics with their partition counts.
async fn topics_exist(
    config: &Config,
    program: &str,
    topics: &[String],
    known: &[String],
    create_flag: Option<&str>,
) -> Result<std::collections::BTreeMap<String, i32>, Failure> {
    let servers = config.kafka.bootstrap_servers();
    let existing = crate::kafka::broker_topics(&config.kafka).await.map_err(|error| {
        Failure::new(format!("{error}; is a broker running at {servers}? set --brokers or DIONYSUS_SEED_BROKER"))
    })?;
    let mut problems = Vec::new();
    for topic in topics.iter().filter(|topic| !existing.contains_key(topic.as_str())) {
        let candidates = existing.keys().chain(known).filter(|name| *name != topic).cloned();
        let hint = match crate::registry::closest(topic, candidates) {
            Some(name) => format!("; did you mean `{name}`?"),
            None => match create_flag {
                Some(flag) => format!("; run `{program} topics create` or pass {flag}"),
                None => format!("; run `{program} topics create`"),
            },
        };
        problems.push(format!("topic `{topic}` does not exist on the broker at {servers}{hint}"));
    }
    if !problems.is_empty() {
        return Err(Failure::new(problems.join("\n       ")));
    }
    Ok(existing)
}

/// Checks that the database answers and is migrated, saying how to fix it otherwise.
async fn migrated(config: &Config, program: &str) -> Result<(), Failure> {
    match crate::migrate::pending(&config.database_url).await {
        Ok(pending) if pending.is_empty() => {}
        Ok(pending) => {
            return Err(Failure::new(format!(
                "the database at {} is not migrated: {} dionysus migration(s) pending ({}); run `{program} migrate`",
                crate::config::redact(&config.database_url),
                pending.len(),
                pending.join(", ")
            )))
        }
        Err(crate::migrate::MigrationError::Connect { url, source }) => {
            return Err(Failure::new(format!(
                "cannot connect to PostgreSQL at {url}: {}; is PostgreSQL running there? set --database-url or \
                 DATABASE_URL",
                source.to_string().trim_end()
            )))
        }
        Err(error) => return Err(error.into()),
    }
    Ok(())
}

async fn topics(
    config: &Config,
    registry: &Registry,
    command: TopicsCommand,
    out: &mut (dyn Write + Send),
) -> Result<(), Failure> {
    let specs = crate::kafka::TopicSpec::for_registry(registry);
    if specs.is_empty() {
        writeln!(out, "no topics are declared in this binary (#[dionysus::topic])")?;
        return Ok(());
    }
    let servers = config.kafka.bootstrap_servers();
    let unreachable = |error: crate::kafka::TransportError| {
        Failure::new(format!("{error}; is a broker running at {servers}? set --brokers or DIONYSUS_SEED_BROKER"))
    };
    let existing = crate::kafka::broker_topics(&config.kafka).await.map_err(unreachable)?;
    match command {
        TopicsCommand::Create => {
            let missing: Vec<_> = specs.iter().filter(|spec| !existing.contains_key(&spec.name)).cloned().collect();
            let created = crate::kafka::create_topics(&config.kafka, &missing).await?;
            for spec in &specs {
                let was_created = created.contains(&crate::kafka::TopicCreation::Created(spec.name.clone()));
                match existing.get(&spec.name) {
                    _ if was_created => writeln!(
                        out,
                        "created {} ({} partition(s), replication factor {})",
                        spec.name, spec.partitions, spec.replication_factor
                    )?,
                    Some(&found) if found != spec.partitions && declares_partitions(registry, &spec.name) => writeln!(
                        out,
                        "exists  {} ({found} partition(s), {} declared: not changed)",
                        spec.name, spec.partitions
                    )?,
                    _ => writeln!(out, "exists  {}", spec.name)?,
                }
            }
        }
        TopicsCommand::List => {
            let width = specs.iter().map(|spec| spec.name.len()).max().unwrap_or(0);
            writeln!(out, "{:<width$}  {:>8}  {:>9}", "topic", "declared", "on broker")?;
            for spec in &specs {
                let (found, note) = match existing.get(&spec.name) {
                    None => ("missing".to_owned(), "  <- run `topics create`"),
                    Some(&found) if found != spec.partitions && declares_partitions(registry, &spec.name) => {
                        (found.to_string(), "  <- partition count differs from the declaration")
                    }
                    Some(found) => (found.to_string(), ""),
                };
                writeln!(out, "{:<width$}  {:>8}  {found:>9}{note}", spec.name, spec.partitions)?;
            }
        }
    }
    Ok(())
}

/// Writes the `CREATE TABLE` statement of each replica (of `tables`, when given), by table
/// name, resolved against the configured attribute names as the consumer resolves them.
fn replica_ddl(
    config: &Config,
    replicas: &Replicas,
    tables: &[String],
    out: &mut (dyn Write + Send),
) -> Result<(), Failure> {
    let mut declared: Vec<_> = replicas.iter().collect();
    if declared.is_empty() {
        return Err(Failure::usage(
            "this binary links no #[derive(Consume)] replica, so no table to print; declare one and call \
             dionysus::cli::run() from the binary that links it",
        ));
    }
    declared.sort_by_key(|replica| replica.table);
    if let Some(unknown) = tables.iter().find(|table| !declared.iter().any(|replica| replica.table == table.as_str())) {
        let names: Vec<&str> = declared.iter().map(|replica| replica.table).collect();
        let hint = crate::registry::closest(unknown, names.iter().map(|name| (*name).to_owned()))
            .map_or_else(String::new, |name| format!("; did you mean `{name}`?"));
        return Err(Failure::usage(format!(
            "--table {unknown}: no replica is kept in that table{hint} (replica tables: {})",
            names.join(", ")
        )));
    }
    let selected =
        declared.into_iter().filter(|replica| tables.is_empty() || tables.iter().any(|t| t == replica.table));
    let mut problems = Vec::new();
    let mut printed = 0;
    for replica in selected {
        match replica.configured(&config.consumer) {
            Ok(replica) => {
                if printed > 0 {
                    writeln!(out)?;
                }
                write!(out, "{}", replica.create_table())?;
                printed += 1;
            }
            Err(error) => problems.push(error.to_string()),
        }
    }
    match problems.len() {
        0 => Ok(()),
        1 => Err(Failure::new(problems.remove(0))),
        n => Err(Failure::new(format!("{n} replicas cannot be used:\n  - {}", problems.join("\n  - ")))),
    }
}

/// Whether the declaration behind topic `name` sets its partition count (else 1 is only the
/// default and any count on the broker is fine).
fn declares_partitions(registry: &Registry, name: &str) -> bool {
    registry.resolve(name).is_some_and(|(declaration, _)| declaration.partitions.is_some())
}

async fn check(
    config: &Config,
    registry: &Registry,
    offline: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), Failure> {
    let mut problems: Vec<String> = Vec::new();
    if let Err(error) = registry.validate() {
        problems.extend(error.problems.iter().map(ToString::to_string));
    }
    writeln!(
        out,
        "declarations: {} topic(s), {} model(s), {} publication(s)",
        registry.topics().count(),
        registry.models().len(),
        registry.publications().len()
    )?;
    // The replicas and handlers of the topics these declarations declare or name.
    let known = |topic: &str| {
        registry.resolve(topic).is_some() || registry.references().iter().any(|reference| reference.topic == topic)
    };
    let all_replicas: Vec<_> = Replicas::global().iter().collect();
    let handlers = crate::consumer::handlers().filter(|handler| known(handler.topic));
    for warning in crate::consumer::handler_warnings(registry, &all_replicas, handlers) {
        writeln!(out, "warning: {warning}")?;
    }
    let mut replicas = Vec::new();
    for replica in all_replicas.iter().filter(|replica| known(replica.topic)) {
        match replica.configured(&config.consumer) {
            Ok(replica) => replicas.push(replica),
            Err(error) => problems.push(error.to_string()),
        }
    }
    let mut migrated = false;
    match crate::migrate::pending(&config.database_url).await {
        Ok(pending) if pending.is_empty() => {
            migrated = true;
            writeln!(out, "database: migrated")?;
        }
        Ok(pending) => problems.push(format!(
            "{} migration(s) pending ({}); run `dionysus migrate`",
            pending.len(),
            pending.join(", ")
        )),
        Err(error) => problems.push(Report(&error).to_string()),
    }
    if migrated && !replicas.is_empty() {
        match replica_tables(config, &replicas).await {
            Ok(found) if found.is_empty() => writeln!(out, "replica tables: {} checked", replicas.len())?,
            Ok(found) => problems.extend(found.iter().map(ToString::to_string)),
            Err(error) => problems.push(error),
        }
    }
    if !offline {
        let specs = crate::kafka::TopicSpec::for_registry(registry);
        let names: Vec<String> = specs.iter().map(|spec| spec.name.clone()).collect();
        match crate::kafka::partition_counts(&config.kafka, &names).await {
            Ok(counts) => {
                for spec in &specs {
                    match counts.get(&spec.name).copied().flatten() {
                        None => problems.push(format!("topic `{}` does not exist on the broker", spec.name)),
                        Some(found)
                            if found != spec.partitions
                                && registry.resolve(&spec.name).is_some_and(|(d, _)| d.partitions.is_some()) =>
                        {
                            problems.push(format!(
                                "topic `{}` has {found} partition(s), {} declared",
                                spec.name, spec.partitions
                            ))
                        }
                        Some(_) => {}
                    }
                }
                writeln!(out, "broker: {} topic(s) checked on {}", specs.len(), config.kafka.bootstrap_servers())?;
            }
            Err(error) => problems.push(Report(&error).to_string()),
        }
    }
    if problems.is_empty() {
        writeln!(out, "ok")?;
        Ok(())
    } else {
        Err(Failure::new(format!("{} problem(s):\n  - {}", problems.len(), problems.join("\n  - "))))
    }
}

/// The problems of the tables of `replicas` (see `Consumer::check_tables`), or why they could
/// not be checked.
async fn replica_tables(
    config: &Config,
    replicas: &[&'static crate::consumer::replica::ReplicaDescriptor],
) -> Result<Vec<crate::consumer::replica::TableProblem>, String> {
    let pool = crate::db::pool(&config.database_url, 1).map_err(|error| Report(&error).to_string())?;
    let mut conn = crate::db::checkout(&pool).await.map_err(|error| Report(&error).to_string())?;
    crate::consumer::replica::check_tables(&mut conn, replicas)
        .await
        .map_err(|error| format!("checking the replica tables: {}", Report(&error)))
}

async fn outbox(config: &Config, command: OutboxCommand, out: &mut (dyn Write + Send)) -> Result<(), Failure> {
    let age = match &command {
        OutboxCommand::Prune { older_than } => Some(duration("--older-than", older_than)?),
        _ => None,
    };
    let pool = crate::db::pool(&config.database_url, 1)?;
    if let (OutboxCommand::Prune { older_than }, Some(age)) = (&command, age) {
        let deleted = crate::producer::relay::prune(&pool, age).await?;
        writeln!(out, "pruned {deleted} published row(s) older than {older_than}")?;
        return Ok(());
    }
    let mut conn = crate::db::checkout(&pool).await?;
    match command {
        OutboxCommand::Stats { json } => {
            let stats = crate::producer::relay::inspect::stats(&mut conn).await?;
            if json {
                writeln!(out, "{}", serde_json::to_string(&stats)?)?;
                return Ok(());
            }
            writeln!(out, "backlog: {} row(s), {} waiting for a retry", stats.backlog, stats.retrying)?;
            writeln!(out, "oldest unpublished: {:.1} s", stats.oldest_unpublished_seconds)?;
            writeln!(out, "parked (failed): {} row(s)", stats.parked.total)?;
            for (class, count) in &stats.parked.by_error_class {
                writeln!(out, "  {class:<24} {count}")?;
            }
        }
        OutboxCommand::Retry { id, error_class } => {
            let updated = crate::producer::relay::inspect::retry_parked(&mut conn, id, error_class).await?;
            writeln!(out, "{updated} parked row(s) will be retried")?;
        }
        OutboxCommand::Prune { .. } => {}
    }
    Ok(())
}

impl Dionysus {
    /// The command line over this handle: the global flags override its configuration.
    pub fn cli(&self) -> Cli {
        Cli::new(self.clone())
    }
}
