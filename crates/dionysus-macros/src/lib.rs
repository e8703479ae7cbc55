//! Procedural macros of dionysus. Use them through the `dionysus` crate, which re-exports
//! them and provides the runtime items the generated code refers to
//! (`::dionysus::__private`).
//!
//! Every macro follows one pipeline: **parse** the attribute into typed options (collecting
//! every error), **validate** cross-field rules, then **expand** a valid model into a thin
//! trait impl plus an `inventory` registry entry. When validation fails the macro emits the
//! errors together with a minimal stub, so the user sees the real mistake and not a cascade.

mod attr;
mod avro;
mod cascade;
mod consume;
mod ctxt;
mod diesel;
mod field_name;
mod handler;
mod publish;
#[cfg(test)]
mod snapshot_tests;
mod suggest;
mod symbol;
mod topic;

use proc_macro::TokenStream;

/// Declares a Kafka topic: `#[dionysus::topic(namespace = "v3", name = "rentals",
/// partition_key = "account_id", partitions = 12, genesis_replica = true)]` on a unit struct.
///
/// See `dionysus::topic` for the full documentation.
#[proc_macro_attribute]
pub fn topic(args: TokenStream, item: TokenStream) -> TokenStream {
    topic::expand(args.into(), item.into()).into()
}

/// Derives `dionysus::Publishable` for a diesel model: `#[publish(topic = "v3_rentals",
/// partition_key = "account_id", with(BookingsFee), observe(Account, columns(…)))]`, one per
/// topic, and optionally `#[publishable(model_name = "…", soft_delete = "…")]`.
///
/// See `dionysus::Publishable` for the full documentation.
#[proc_macro_derive(Publishable, attributes(publish, publishable))]
pub fn derive_publishable(input: TokenStream) -> TokenStream {
    publish::derive(input.into()).into()
}

/// Describes a diesel struct as a replica of another service's model: `#[derive(Consume)]`
/// with `#[consume(topic = "v3_rentals", model = "Rental", soft_delete = "synced_canceled_at")]`.
///
/// See `dionysus::Consume` for the full documentation.
#[proc_macro_derive(Consume, attributes(consume, diesel))]
pub fn derive_consume(input: TokenStream) -> TokenStream {
    consume::derive(input.into()).into()
}

/// Registers an async handler for events of a topic:
/// `#[dionysus::consume(topic = "v3_rentals", event = "rental_updated")]`.
///
/// See `dionysus::consume` for the full documentation.
#[proc_macro_attribute]
pub fn consume(args: TokenStream, item: TokenStream) -> TokenStream {
    handler::expand(args.into(), item.into()).into()
}
