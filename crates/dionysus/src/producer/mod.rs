//! The producing side: the [`Publishable`](publishable::Publishable) trait a model derives,
//! the outbox writer called in the application's transaction, the planner that turns outbox
//! rows into messages (loading records, sideloading dependencies, serializing), the relay that
//! publishes them in order, genesis that re-publishes everything, and the sender they share.
//!
//! An application reaches it through its handle: [`Dionysus::outbox`](crate::Dionysus::outbox)
//! (or the free functions of [`outbox`], which use the global handle),
//! [`Dionysus::relay`](crate::Dionysus::relay) and [`Dionysus::genesis`](crate::Dionysus::genesis).
//!
//! Built on the wire format (`wire`) and the declarations (`registry`); nothing here consumes.

#[cfg(feature = "avro")]
pub(crate) mod avro;
pub mod genesis;
pub mod outbox;
pub(crate) mod partition_key;
pub(crate) mod plan;
pub(crate) mod publishable;
pub mod relay;
pub mod respond;
pub(crate) mod sender;
pub mod serialize;
mod suppress;
