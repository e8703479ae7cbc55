//! Smoke demo of the foundation: validates the declarations, applies the framework
//! migrations, creates the declared topics and sends one message through the broker and
//! back.
//!
//! Run with (a broker and PostgreSQL running; `scripts/demo` runs the rentals example instead):
//! `DIONYSUS_SEED_BROKER=127.0.0.1:9092 DATABASE_URL=postgres://… cargo run -p dionysus-example-smoke`.

#![allow(clippy::print_stdout, reason = "a demo reports to its user on stdout")]

use std::time::Duration;

use anyhow::Context as _;
use dionysus::kafka::{self, TopicSpec};
use dionysus::prelude::*;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureRecord;
use rdkafka::Message;

#[dionysus::topic(namespace = "smoke", name = "rentals", partition_key = "account_id", partitions = 3)]
/// The demo topic, `smoke_rentals`.
pub struct Rentals;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?.with_env_kafka_properties();
    let registry = Registry::global();
    registry.validate()?;
    println!("declarations valid: {} topic(s)", registry.topics().count());

    let applied = dionysus::migrate(&config.database_url).await?;
    println!("migrations applied: {}", applied.len());

    let created = kafka::create_topics(&config.kafka, &TopicSpec::for_registry(registry)).await?;
    println!("topics: {created:?}");

    let producer = kafka::producer(&config.kafka)?;
    let value = r#"{"message":[{"event":"rental_created","model_name":"Rental","data":[{"id":1,"account_id":2}]}]}"#;
    let partition = kafka::partition_for(b"2", 3);
    let delivery = producer
        .send(
            FutureRecord::to(Rentals::NAME).key("Rental:1").partition(partition).payload(value),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(error, _)| error)
        .context("producing the demo message")?;
    println!("published Rental:1 to {}[{}] at offset {}", Rentals::NAME, delivery.partition, delivery.offset);

    let group = format!("smoke-{}", std::process::id());
    let consumer: StreamConsumer = kafka::consumer_config(&config.kafka, &group)
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .create()?;
    consumer.subscribe(&[Rentals::NAME])?;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .context("no message came back within 30 s")??;
        if message.key() == Some(b"Rental:1") && message.offset() == delivery.offset {
            let payload = message.payload_view::<str>().transpose()?.unwrap_or_default();
            println!("consumed: {payload}");
            break;
        }
    }
    println!("smoke demo passed");
    Ok(())
}
