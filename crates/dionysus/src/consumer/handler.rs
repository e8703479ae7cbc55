//! Application handlers declared with `#[dionysus::consume(topic = …, event = …)]`: what a
//! handler is given (a [`Context`]: the event, its message's coordinates and raw payload, a
//! database connection), the typed inputs it may ask for (records deserialized into any
//! serde type), what it may return (nothing, or [`Reply`]s to publish), and the registry of
//! every handler linked into the binary.
//!
//! When a handler runs (inside the batch's transaction or after its commit) and what a
//! failure does to the batch is the consumer's (`consumer::Consumer`); the macro's checks on
//! the function's shape are `dionysus-macros`'.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use diesel_async::AsyncPgConnection;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::batch::InboundMessage;
use super::events::{ConsumedEvent, LocalChange};
use super::reply::Reply;
pub use crate::config::{FailurePolicy, UnknownFailurePolicy};
use crate::consumer::replica::Record;

/// What a handler is given: the event, where its message came from, its raw payload, and a
/// database connection.
///
/// For a handler declared with `in_transaction`, [`Context::conn`] is the batch's own
/// connection, inside its transaction: what the handler writes commits (or rolls back) with
/// the replica rows and the partition's stored offset. For the others it is a connection of
/// the consumer's pool, used after the batch's commit.
pub struct Context<'a> {
    event: &'a ConsumedEvent,
    message: &'a InboundMessage,
    conn: &'a mut AsyncPgConnection,
    in_transaction: bool,
    /// The acknowledgement of a checkpointed handler ([`Context::ack`]).
    ack: Option<Ack>,
    /// The type name of the error the handler returned, set by [`HandlerOutput`].
    error_class: Option<&'static str>,
    /// Tries of this event before this one (checkpointed handlers).
    retry_count: u32,
    /// Whether the event is replayed by a reinit.
    replaying: bool,
    replies: Vec<Reply>,
}

impl<'a> Context<'a> {
    pub(crate) fn new(
        event: &'a ConsumedEvent,
        message: &'a InboundMessage,
        conn: &'a mut AsyncPgConnection,
        in_transaction: bool,
    ) -> Context<'a> {
        Context {
            event,
            message,
            conn,
            in_transaction,
            ack: None,
            error_class: None,
            retry_count: 0,
            replaying: false,
            replies: Vec::new(),
        }
    }

    /// The same context for another try of the event.
    pub(crate) fn with_retry_count(mut self, retry_count: u32) -> Context<'a> {
        self.retry_count = retry_count;
        self
    }

    /// The same context for an event a reinit replays (or not).
    pub(crate) fn with_replaying(mut self, replaying: bool) -> Context<'a> {
        self.replaying = replaying;
        self
    }

    /// Takes the acknowledgement the handler gave, if any.
    pub(crate) fn take_ack(&mut self) -> Option<Ack> {
        self.ack.take()
    }

    /// The type name of the error the handler returned, once it has returned one.
    pub(crate) fn error_class(&self) -> Option<&'static str> {
        self.error_class
    }

    /// Acknowledges the event for the checkpoint log: when a handler declared with
    /// `checkpoint` returns `Ok` after this call, the event is saved (`dionysus_events`) in
    /// the batch's transaction, with the handler's own writes. The last call wins. Returns
    /// the acknowledgement, so a handler may end with `Ok(ctx.ack(id, time))`.
    ///
    /// A handler that does not acknowledge saves nothing (`event_skipped`). For handlers
    /// without `checkpoint` the acknowledgement is ignored.
    pub fn ack(&mut self, entity_id: impl Into<String>, event_time: DateTime<Utc>) -> Ack {
        let ack = Ack::new(entity_id, event_time);
        self.ack = Some(ack.clone());
        ack
    }

    /// Acknowledges the event with an [`Ack`] built beforehand (e.g. with a version).
    pub fn acknowledge(&mut self, ack: Ack) {
        self.ack = Some(ack);
    }

    /// Whether the event is replayed by a reinit (`dionysus reinit`, [`Consumer::reinit`](
    /// super::Consumer::reinit)): it was consumed before, and the replica tables are being
    /// rebuilt from the topic. The handler's replies (and error events, and cascades) are not
    /// written for it; a handler with other side effects (mails, calls to other services)
    /// should skip them when this is true.
    pub fn replaying(&self) -> bool {
        self.replaying
    }

    /// How many times this event was tried before this call (0 on the first try).
    pub fn retry_count(&self) -> u32 {
        self.retry_count
    }

    /// The event, as event-bus subscribers see it.
    pub fn event(&self) -> &'a ConsumedEvent {
        self.event
    }

    /// The event's name, e.g. `rental_updated`.
    pub fn event_name(&self) -> &'a str {
        &self.event.event_name
    }

    /// The model name as sent, e.g. `Rental`.
    pub fn model_name(&self) -> &'a str {
        &self.event.model_name
    }

    /// The topic the message came from.
    pub fn topic(&self) -> &'a str {
        &self.message.topic
    }

    /// The message's partition.
    pub fn partition(&self) -> i32 {
        self.message.partition
    }

    /// The message's offset.
    pub fn offset(&self) -> i64 {
        self.message.offset
    }

    /// The message's key as sent (e.g. `Rental:1`), if it had one.
    pub fn key(&self) -> Option<&'a [u8]> {
        self.message.key.as_deref()
    }

    /// The message's raw payload (the whole envelope, with every event of the message).
    pub fn payload(&self) -> Option<&'a [u8]> {
        self.message.payload.as_deref()
    }

    /// The envelope parsed as JSON (`{"message": [...]}`); `None` for a tombstone.
    pub fn envelope(&self) -> Option<Result<Value, serde_json::Error>> {
        self.payload().map(serde_json::from_slice)
    }

    /// The event's records in the consumer's canonical form (`synced_id`, `synced_*` times,
    /// plain attributes, sideloads split off).
    pub fn records(&self) -> &'a [Record] {
        &self.event.transformed_data
    }

    /// The changes the batch made to local rows for this event (empty when the consumer
    /// does not compute local changes, see `ConsumerBuilder::local_changes`).
    pub fn local_changes(&self) -> &'a [LocalChange] {
        &self.event.local_changes
    }

    /// Whether the handler runs inside the batch's transaction.
    pub fn in_transaction(&self) -> bool {
        self.in_transaction
    }

    /// A database connection: the batch's, inside its transaction, for an `in_transaction`
    /// handler; a pooled one otherwise.
    pub fn conn(&mut self) -> &mut AsyncPgConnection {
        self.conn
    }

    /// Publishes `reply` because of this event, through the outbox: for an `in_transaction`
    /// handler in the batch's transaction (published exactly when the batch commits); for the
    /// others in a transaction of its own right after the handler returns. Replies of a
    /// handler that fails are dropped.
    pub fn reply(&mut self, reply: Reply) {
        self.replies.push(reply);
    }

    /// The replies pushed so far, taken out.
    pub(crate) fn take_replies(&mut self) -> Vec<Reply> {
        std::mem::take(&mut self.replies)
    }
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("topic", &self.message.topic)
            .field("partition", &self.message.partition)
            .field("offset", &self.message.offset)
            .field("event", &self.event.event_name)
            .field("in_transaction", &self.in_transaction)
            .field("replies", &self.replies.len())
            .finish_non_exhaustive()
    }
}

/// A checkpointed handler's acknowledgement of an event: what the checkpoint log saves
/// besides the message ([`Context::ack`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ack {
    /// The id of the entity the event is about.
    pub entity_id: String,
    /// The event's time, as the handler sees it.
    pub event_time: DateTime<Utc>,
    /// A version of the event, if the handler gives one.
    pub event_version: Option<String>,
}

impl Ack {
    /// An acknowledgement of `entity_id` at `event_time`, without a version.
    pub fn new(entity_id: impl Into<String>, event_time: DateTime<Utc>) -> Ack {
        Ack { entity_id: entity_id.into(), event_time, event_version: None }
    }

    /// The same acknowledgement with an event version (`"v1"`).
    #[must_use]
    pub fn version(mut self, version: impl Into<String>) -> Ack {
        self.event_version = Some(version.into());
        self
    }
}

/// Why a handler did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerError {
    /// A record of the event does not deserialize into the handler's input type; the handler
    /// was not called for any record of the event.
    #[error("record {index} of the event does not deserialize into `{target}`")]
    InvalidInput {
        /// Index of the record in the event's `data`.
        index: usize,
        /// The input type.
        target: &'static str,
        /// serde's error.
        #[source]
        source: serde_json::Error,
    },
    /// The handler returned an error.
    #[error("the handler returned an error")]
    Failed(#[source] Box<dyn StdError + Send + Sync + 'static>),
}

impl HandlerError {
    /// The dead-letter reason for this failure: `handler_input_invalid` or `handler_failed`.
    pub fn reason(&self) -> &'static str {
        match self {
            HandlerError::InvalidInput { .. } => "handler_input_invalid",
            HandlerError::Failed(_) => "handler_failed",
        }
    }
}

/// The future a handler returns.
pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send + 'a>>;

/// A handler function as registered: called with the context, once per event.
pub(crate) type HandlerFn = for<'a, 'b> fn(&'a mut Context<'b>) -> HandlerFuture<'a>;

/// A handler declared with `#[dionysus::consume(topic = "v3_rentals", event =
/// "rental_updated")]`.
#[derive(Debug)]
pub struct HandlerDeclaration {
    /// Topic of the events it handles.
    pub topic: &'static str,
    /// Event name it handles (`rental_updated`), or `*` for every event of the topic.
    pub event: &'static str,
    /// The function, wrapped to take the context and deserialize the handler's input.
    pub handler: HandlerFn,
    /// Whether it runs inside the batch's transaction (`in_transaction`) rather than after
    /// the batch's commit.
    pub in_transaction: bool,
    /// Whether it writes the checkpoint log (`checkpoint`, which implies `in_transaction`).
    pub checkpoint: bool,
    /// What its failures become (`on_failure = "…"`); `None` leaves it to the consumer.
    pub on_failure: Option<FailurePolicy>,
    /// Whether its failures publish an `event.error.<event>` error event (`error_events`),
    /// whatever the consumer's setting.
    pub error_events: bool,
    /// Path of the function.
    pub declared_by: &'static str,
    /// `file:line`.
    pub location: &'static str,
}

#[doc(hidden)]
pub struct HandlerEntry(pub &'static HandlerDeclaration);
inventory::collect!(HandlerEntry);

/// Every handler linked into this binary.
pub fn handlers() -> impl Iterator<Item = &'static HandlerDeclaration> {
    inventory::iter::<HandlerEntry>.into_iter().map(|entry| entry.0)
}

impl HandlerDeclaration {
    /// Whether this handler wants `event` of `topic`.
    pub fn matches(&self, topic: &str, event: &str) -> bool {
        self.topic == topic && (self.event == "*" || self.event == event)
    }
}

/// What a handler function may return: `Result<(), E>`, `Result<Ack, E>` (an acknowledgement
/// for the checkpoint log, see [`Context::ack`]), or replies to publish, `Result<Reply, E>` or
/// `Result<Vec<Reply>, E>`, where `E` converts into a boxed error (any
/// `std::error::Error + Send + Sync`, `dionysus::Error`, `anyhow::Error`, `String`).
#[diagnostic::on_unimplemented(
    message = "a consume handler returns `Result<(), E>`, `Result<Reply, E>` or `Result<Vec<Reply>, E>`, not `{Self}`",
    label = "expected `Result<(), E>` here",
    note = "E may be `dionysus::Error`, any `std::error::Error + Send + Sync + 'static`, or `anyhow::Error`; a checkpointed handler may return `Result<dionysus::checkpoint::Ack, E>`"
)]
pub trait HandlerOutput {
    /// The result as the consumer sees it; what the handler returned for the consumer to do
    /// (an acknowledgement, replies) and the error's type name are kept in `ctx`.
    fn into_handler_result(self, ctx: &mut Context<'_>) -> Result<(), HandlerError>;
}

impl<E> HandlerOutput for Result<(), E>
where
    E: Into<Box<dyn StdError + Send + Sync + 'static>>,
{
    fn into_handler_result(self, ctx: &mut Context<'_>) -> Result<(), HandlerError> {
        self.map_err(|error| {
            ctx.error_class = Some(std::any::type_name::<E>());
            HandlerError::Failed(error.into())
        })
    }
}

impl<E> HandlerOutput for Result<Ack, E>
where
    E: Into<Box<dyn StdError + Send + Sync + 'static>>,
{
    fn into_handler_result(self, ctx: &mut Context<'_>) -> Result<(), HandlerError> {
        match self {
            Ok(ack) => {
                ctx.ack = Some(ack);
                Ok(())
            }
            Err(error) => Err::<(), E>(error).into_handler_result(ctx),
        }
    }
}

impl<E> HandlerOutput for Result<Reply, E>
where
    E: Into<Box<dyn StdError + Send + Sync + 'static>>,
{
    fn into_handler_result(self, ctx: &mut Context<'_>) -> Result<(), HandlerError> {
        match self {
            Ok(reply) => {
                ctx.reply(reply);
                Ok(())
            }
            Err(error) => Err::<(), E>(error).into_handler_result(ctx),
        }
    }
}

impl<E> HandlerOutput for Result<Vec<Reply>, E>
where
    E: Into<Box<dyn StdError + Send + Sync + 'static>>,
{
    fn into_handler_result(self, ctx: &mut Context<'_>) -> Result<(), HandlerError> {
        match self {
            Ok(replies) => {
                ctx.replies.extend(replies);
                Ok(())
            }
            Err(error) => Err::<(), E>(error).into_handler_result(ctx),
        }
    }
}

/// The event's records deserialized into `T`, from each record's attributes in the
/// consumer's canonical form (`synced_id`, `synced_updated_at`, …, plain attributes as sent).
/// The first record that does not fit is the error.
pub fn records_as<T: DeserializeOwned>(event: &ConsumedEvent) -> Result<Vec<T>, HandlerError> {
    event
        .transformed_data
        .iter()
        .enumerate()
        .map(|(index, record)| {
            serde_json::from_value(Value::Object(record.attributes.clone()))
                .map_err(|source| HandlerError::InvalidInput { index, target: std::any::type_name::<T>(), source })
        })
        .collect()
}

/// Whether a handler's failure comes from a database error worth retrying as is
/// (connection trouble, serialization failure): such a failure is the consumer's own, not
/// the message's, so the batch is retried rather than the message dead-lettered.
pub(crate) fn transient_cause(error: &HandlerError, is_transient: fn(&diesel::result::Error) -> bool) -> bool {
    let HandlerError::Failed(source) = error else { return false };
    let mut cause: Option<&(dyn StdError + 'static)> = Some(source.as_ref());
    while let Some(current) = cause {
        if current.downcast_ref::<diesel::result::Error>().is_some_and(is_transient) {
            return true;
        }
        cause = current.source();
    }
    false
}
