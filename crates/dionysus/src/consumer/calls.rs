//! The handler calls of a batch, recorded for whoever asks (the testing kit): which
//! `#[dionysus::consume]` handler ran for which event, inside or after the transaction, and
//! how it ended. Only calls made on the task that asked are recorded; running handlers is
//! `apply`'s.

use std::future::Future;
use std::sync::{Arc, Mutex};

use super::events::ConsumedEvent;
use super::handler::{HandlerDeclaration, HandlerError};

tokio::task_local! {
    static CALLS: Arc<Mutex<Vec<HandlerCall>>>;
}

/// One call of a `#[dionysus::consume]` handler.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandlerCall {
    /// Path of the handler function.
    pub handler: &'static str,
    /// Topic of the event.
    pub topic: String,
    /// Partition of the event's message.
    pub partition: i32,
    /// Offset of the event's message.
    pub offset: i64,
    /// Event name, e.g. `rental_updated`.
    pub event_name: String,
    /// Whether it ran inside the batch's transaction (`in_transaction`).
    pub in_transaction: bool,
    /// How it failed: `None` when it returned `Ok`.
    pub failure: Option<HandlerFailure>,
}

/// How a handler call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandlerFailure {
    /// `handler_input_invalid` or `handler_failed` (see [`HandlerError::reason`]).
    pub reason: &'static str,
    /// The error with its causes, as logged.
    pub report: String,
}

impl HandlerCall {
    /// Whether the handler returned `Ok`.
    pub fn succeeded(&self) -> bool {
        self.failure.is_none()
    }
}

/// Runs `future`, recording every handler call made on this task meanwhile.
pub(crate) async fn recording<F: Future>(future: F) -> (F::Output, Vec<HandlerCall>) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let output = CALLS.scope(calls.clone(), future).await;
    let recorded = match calls.lock() {
        Ok(mut calls) => std::mem::take(&mut *calls),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    };
    (output, recorded)
}

/// Records a call when this task is [`recording`]; otherwise does nothing.
pub(crate) fn record(declaration: &HandlerDeclaration, event: &ConsumedEvent, outcome: Result<(), &HandlerError>) {
    let _ = CALLS.try_with(|calls| {
        let call = HandlerCall {
            handler: declaration.declared_by,
            topic: event.topic.clone(),
            partition: event.partition,
            offset: event.offset,
            event_name: event.event_name.clone(),
            in_transaction: declaration.in_transaction,
            failure: outcome.err().map(|error| HandlerFailure {
                reason: error.reason(),
                report: crate::telemetry::Report(error).to_string(),
            }),
        };
        match calls.lock() {
            Ok(mut calls) => calls.push(call),
            Err(poisoned) => poisoned.into_inner().push(call),
        }
    });
}
