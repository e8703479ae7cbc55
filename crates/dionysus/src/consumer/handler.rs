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

use diesel_async::AsyncPgConnection;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::batch::InboundMessage;
use super::events::{ConsumedEvent, LocalChange};
use super::reply::Reply;
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
    replies: Vec<Reply>,
}

impl<'a> Context<'a> {
    pub(crate) fn new(
        event: &'a ConsumedEvent,
        message: &'a InboundMessage,
        conn: &'a mut AsyncPgConnection,
        in_transaction: bool,
    ) -> Context<'a> {
        Context { event, message, conn, in_transaction, replies: Vec::new() }
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

/// What a handler function may return: `Result<(), E>`, or replies to publish,
/// `Result<Reply, E>` or `Result<Vec<Reply>, E>`, where `E` converts into a boxed error (any
/// `std::error::Error + Send + Sync`, `dionysus::Error`, `anyhow::Error`, `String`).
#[diagnostic::on_unimplemented(
    message = "a consume handler returns `Result<(), E>`, `Result<Reply, E>` or `Result<Vec<Reply>, E>`, not `{Self}`",
    label = "expected `Result<(), E>` here",
    note = "E may be `dionysus::Error`, any `std::error::Error + Send + Sync + 'static`, or `anyhow::Error`"
)]
pub trait HandlerOutput {
    /// The result as the consumer sees it; what the handler returned for the consumer to do
    /// (replies) is handed to `ctx`.
    fn into_handler_result(self, ctx: &mut Context<'_>) -> Result<(), HandlerError>;
}

impl<E> HandlerOutput for Result<(), E>
where
    E: Into<Box<dyn StdError + Send + Sync + 'static>>,
{
    fn into_handler_result(self, _ctx: &mut Context<'_>) -> Result<(), HandlerError> {
        self.map_err(|error| HandlerError::Failed(error.into()))
    }
}

impl<E> HandlerOutput for Result<Reply, E>
where
    E: Into<Box<dyn StdError + Send + Sync + 'static>>,
{
    fn into_handler_result(self, ctx: &mut Context<'_>) -> Result<(), HandlerError> {
        let reply = self.map_err(|error| HandlerError::Failed(error.into()))?;
        ctx.reply(reply);
        Ok(())
    }
}

impl<E> HandlerOutput for Result<Vec<Reply>, E>
where
    E: Into<Box<dyn StdError + Send + Sync + 'static>>,
{
    fn into_handler_result(self, ctx: &mut Context<'_>) -> Result<(), HandlerError> {
        let replies = self.map_err(|error| HandlerError::Failed(error.into()))?;
        ctx.replies.extend(replies);
        Ok(())
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
