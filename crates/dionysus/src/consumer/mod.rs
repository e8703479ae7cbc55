//! The consumer runtime: reads the declared topics in one consumer group and keeps the
//! replica tables in sync, effectively once.
//!
//! * Partitions are processed concurrently, each strictly in order, in batches of up to
//!   [`ConsumerConfig::batch_size`](crate::config::ConsumerConfig::batch_size) messages.
//!   A partition that has 32 batches (or 64 MiB) read ahead is paused in librdkafka until it
//!   is down to 16 batches (and 32 MiB), so a partition with a long backlog never keeps the
//!   others waiting, and its worker still has work while the resumed fetch comes in. The
//!   member as a whole holds at most 192 batches (or 64 MiB) read ahead: past that, each
//!   partition holding 4 batches or more is paused until the member is down to half, or the
//!   partition to 2 batches, so memory stays bounded however many partitions are assigned.
//! * A batch is one PostgreSQL transaction: the partition's offset row is locked, messages
//!   below the stored offset are skipped (already applied), every record is written with
//!   set-based statements under the timestamp guard, and the next offset is stored — all or
//!   nothing. The Kafka commit follows; on assignment the consumer seeks to the stored
//!   offset, so a crash between the two commits applies nothing twice.
//! * A skip in a partition's offsets (from the stored offset to the first message, or
//!   between two messages) is read again before it is believed: a broker may serve a later
//!   record while an earlier one is still being written, and the stored offset would move
//!   past the earlier one for good. The missing offsets are applied in order when they come;
//!   a skip that is still there after re-reads for about 0.8 s (compaction, transaction
//!   markers, retention) is taken, and the partition's next skips for a minute with it
//!   ([`dionysus_consumer_offset_gaps_total`](crate::telemetry::METRICS) counts them).
//! * Work and memory per message are linear in its size: each record exists once in full,
//!   in the form subscribers receive ([`ConsumedEvent::transformed_data`]), and rows are
//!   written from it at most a thousand per statement, so applying a message of many
//!   records raises the process's resident memory by at most 16 times its size (up to
//!   about 25 times for records made mostly of sideloads).
//! * A record goes to the replica of its model name (`Rental`, or a sideload's relationship
//!   name) declared for the topic it was read from, so two services may each publish a
//!   `Rental` on their own topics into replicas of their own; a model with one replica is
//!   written from any topic (a sideload). Two replicas of one model on a topic the consumer
//!   reads stop it at build time ([`ReplicaError`](replica::ReplicaError)).
//! * A batch no one watches — no handlers, subscribers, filters, cascades or local-change
//!   listeners for its topic — is written straight from its messages into the typed column
//!   arrays of one upsert per table, without building records or events; the rows are the
//!   same. Any listener (or a message this lean path does not take: destroys, sideloads,
//!   import topics, a bad message) sends the batch the general way described above.
//! * Bad messages (oversized, malformed JSON, missing id, wrong types, or a row the
//!   database rejects; an unknown model only with [`UnknownModel::DeadLetter`]) go whole to
//!   the dead-letter topic with headers saying why; the partition keeps moving.
//! * A batch that fails for a reason that is not its messages' (the connection broke, a
//!   serialization failure or deadlock, the dead-letter topic unreachable) is retried as a
//!   whole, so order is kept, up to
//!   [`ConsumerConfig::retry_attempts`](crate::config::ConsumerConfig::retry_attempts) times;
//!   then its partition waits, retrying every 30 s, and `/health` names it: nothing is
//!   dead-lettered or committed for our own faults. Every wait watches the shutdown token.
//! * Whether a database error is the message's fault is decided by its kind (which the
//!   driver derives from the SQLSTATE: integrity violations 23xxx are the data's, 40001 and
//!   25006 and broken connections are transient), never by its text. For a SQLSTATE the
//!   driver does not expose (data exceptions 22xxx as well as deadlocks 40P01, lock and
//!   resource errors 55P03, 53xxx, 57Pxx, and a missing column, table or privilege), the
//!   message is held at fault only when it fails alone, three times, while the database
//!   answers otherwise.
//! * Before a failed batch is split or any of its messages blamed, the tables it writes are
//!   checked against their models in the catalog (`replica::setup`: columns and types, the
//!   unique index on the synced id, required columns, privileges). A table that does not fit
//!   is the setup's fault: nothing is dead-lettered or committed, the partition waits and
//!   retries, `/health` names it with the fix, and it moves again by itself once the table
//!   is fixed. The consumer's own statements (its offset row, its processing locks) are
//!   never a message's fault either. [`Consumer::run`] starts by checking the tables of the
//!   topics it reads, and fails with the fixes when they do not fit.
//! * [`ConsumerBuilder::build`] checks the declarations of the topics it reads (each
//!   declared once, by a `#[dionysus::topic]`) and warns about handlers waiting for an event
//!   that no model declared on their topic emits.
//! * `/health` reports a partition with a fault, and one that has not committed for
//!   [`ConsumerConfig::stall_timeout`](crate::config::ConsumerConfig::stall_timeout) while
//!   messages of it wait.
//! * After the commit, event-bus subscribers and `#[dionysus::consume]` handlers are told
//!   what changed (C-19).
//! * A handler declared with `checkpoint` runs inside the batch's transaction and keeps the
//!   checkpoint log ([`crate::checkpoint`]): acknowledged events are saved with its writes,
//!   events it saved already are skipped by checksum, and its failures are recorded,
//!   dead-lettered or block the partition as its [`FailurePolicy`] says.
//! * Handlers may publish [`Reply`]s, and their failures `event.error.<event>` error events
//!   ([`ConsumerBuilder::error_events`]): outbox rows of this service, written in the batch's
//!   transaction for `in_transaction` handlers, so a reply is published exactly when its
//!   cause was consumed (`reply`).
//! * Avro topics (feature `avro`): before a batch is prepared, each of their messages is
//!   read with the configured schema backend (the writer's schema fetched by id, resolved
//!   against the local one) and restated as a one-event envelope (`<model>_updated`, or
//!   `<model>_destroyed` for a tombstone), so replicas, handlers and the checkpoint log see
//!   them as any other message. One that does not decode is dead-lettered as it was read
//!   (`undecodable_avro`); a schema registry that cannot be reached makes the partition
//!   wait, like any fault of ours.
//! * Cascades (`cascade(Rental -> Booking)`, [`Cascade`]) republish the records of this
//!   service related to the ids a batch carries, through the outbox, in the batch's
//!   transaction, each record once per batch ([`ConsumerBuilder::cascades`] turns them off).
//! * [`Consumer::reinit`] replays a group's topics from the earliest offsets into the replica
//!   tables with replies, error events and cascades suppressed up to targets saved in
//!   `dionysus_reinit`; an interrupted reinit resumes, and [`Consumer::run`] keeps the
//!   suppression until the targets are reached (`reinit`).
//!
//! Where we differ from dionysus-rb behind the wire (documented choices):
//!
//! * offsets live in `dionysus_consumer_offsets`, written in the batch's transaction (the gem
//!   relies on Kafka commits and re-applies a batch after a crash);
//! * timestamps are compared as instants; equal timestamps apply, as in the gem;
//! * as in the gem (C-17), the records of a model that has no replica are skipped, the
//!   message's other events applied, and the unknown event still reported on the event bus
//!   ([`UnknownModel::Skip`], the default); [`UnknownModel::DeadLetter`] sends such a message
//!   whole to the dead-letter topic instead;
//! * the `cancel` strategy sets the soft-delete column to the event's time (`updated_at`,
//!   else `created_at`, else now) and keeps an existing cancellation time;
//! * within a batch, aggregate roots are written before their sideloads (level by level); a
//!   record appearing both as a sideload and later as a root in the same batch is ordered by
//!   the timestamp guard rather than by message order;
//! * the event bus is told after the Kafka commit; a process that dies between the database
//!   commit and the notifications does not repeat them.
//!
//! An application starts one from its handle, [`Dionysus::consumer`](crate::Dionysus::consumer),
//! which reads the topics of the binary's `#[derive(Consume)]` replicas unless told others.
//!
//! Replica rules (which row a record becomes, the table a declaration expects) are
//! [`replica`]'s; the wire format is `wire`'s; producing is not this module's business.

pub(crate) mod apply;
#[cfg(feature = "avro")]
pub(crate) mod avro;
pub(crate) mod batch;
#[cfg(feature = "testing")]
pub(crate) mod calls;
pub(crate) mod cascade;
pub(crate) mod checkpoint;
#[cfg(feature = "http")]
pub(crate) mod dead_letters;
mod declarations;
pub(crate) mod dedup;
mod direct;
pub(crate) mod events;
#[cfg(test)]
mod fuzz;
mod gaps;
pub(crate) mod handler;
mod progress;
pub(crate) mod reinit;
mod replaying;
pub mod replica;
pub(crate) mod reply;
pub(crate) mod runtime;

pub use apply::{BatchStep, CascadeFailure, Consumer, ConsumerBuilder, ConsumerError, Health, Subscriber};
pub use batch::{DeadLetter, InboundMessage, UnknownModel};
pub use cascade::{Cascade, CascadeDeclaration, CascadeError};
#[cfg(feature = "cli")]
pub(crate) use declarations::handler_warnings;
pub use events::{ConsumedEvent, LocalChange, MessageFilter, Notification};
pub use handler::{handlers, Ack, Context, FailurePolicy, HandlerDeclaration, HandlerError, UnknownFailurePolicy};
pub use reinit::{AfterReinit, ReinitError, ReinitProgress, ReinitReport, ReinitStep, ReinitTarget, Until, UntilError};
pub use replica::sql::stored_offsets;
pub use reply::{Reply, ReplyError, ERROR_EVENT_MODEL, ERROR_EVENT_PREFIX};
pub use runtime::DeadLetterHeaders;
