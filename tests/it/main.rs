//! Integration tests against real PostgreSQL and the Kafka-protocol broker started by
//! `scripts/test`. One binary, a module per area.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod avro;
mod avro_flow;
mod cascade;
mod checkpoint;
mod cli;
mod cli_process;
mod compatibility;
mod config_env;
mod console_browser;
mod consumer_bounds;
mod consumer_direct;
mod consumer_handlers;
mod consumer_kafka;
mod consumer_models;
mod consumer_names;
mod consumer_setup;
mod consumer_vectors;
// The vectors run a second time with local changes off (rows written blind); see `tracked()`.
#[allow(clippy::duplicate_mod)]
#[path = "consumer_vectors.rs"]
mod consumer_vectors_blind;
mod delayer;
mod flows;
mod genesis;
mod hostile;
mod http;
mod kafka;
mod kit;
mod layout;
mod migrations;
mod pool;
mod producer;
mod readme;
mod reinit;
mod relay;
mod relay_order;
mod surface;
mod topics;
