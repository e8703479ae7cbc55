//! Integration tests against real PostgreSQL and the Kafka-protocol broker started by
//! `scripts/test`. One binary, a module per area.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli;
mod consumer_kafka;
mod consumer_models;
mod consumer_vectors;
mod genesis;
mod kafka;
mod migrations;
mod producer;
mod relay;
mod topics;
