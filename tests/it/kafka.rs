//! Producing and consuming through rdkafka against the test broker: keys, headers,
//! tombstones (the JSON text `null` and a real Kafka null), and the partition choice.

use std::time::Duration;

use dionysus_tests::{consumer_config, create_topic, kafka_config};
use futures_util::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;

#[tokio::test(flavor = "multi_thread")]
async fn messages_with_key_headers_and_tombstones_round_trip() {
    let kafka = kafka_config();
    let topic = create_topic(&kafka, "roundtrip", 1).await;
    let producer = dionysus::kafka::producer(&kafka).unwrap();

    let value = r#"{"message":[{"event":"rental_created","model_name":"Rental","data":[{"id":1}]}]}"#;
    let headers = OwnedHeaders::new().insert(Header { key: "origin", value: Some("it") });
    producer
        .send(
            FutureRecord::to(&topic).key("Rental:1").payload(value).headers(headers),
            Timeout::After(Duration::from_secs(10)),
        )
        .await
        .map_err(|(error, _)| error)
        .unwrap();
    // dionysus-rb's tombstone: the JSON text `null`.
    producer
        .send(FutureRecord::to(&topic).key("Rental:1").payload("null"), Timeout::After(Duration::from_secs(10)))
        .await
        .map_err(|(error, _)| error)
        .unwrap();
    // A real Kafka tombstone: no value at all.
    producer
        .send(FutureRecord::<str, ()>::to(&topic).key("Rental:1"), Timeout::After(Duration::from_secs(10)))
        .await
        .map_err(|(error, _)| error)
        .unwrap();

    let consumer: StreamConsumer = consumer_config(&kafka, &dionysus_tests::unique_name("group")).create().unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut stream = consumer.stream();
    let mut received = Vec::new();
    while received.len() < 3 {
        let message = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("messages arrive within 30 s")
            .unwrap()
            .unwrap();
        let header =
            message.headers().and_then(|h| h.iter().next().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec))));
        received.push((message.key().map(<[u8]>::to_vec), message.payload().map(<[u8]>::to_vec), header));
    }
    assert_eq!(received[0].0.as_deref(), Some(&b"Rental:1"[..]));
    assert_eq!(received[0].1.as_deref(), Some(value.as_bytes()));
    assert_eq!(received[0].2, Some(("origin".to_owned(), Some(b"it".to_vec()))));
    assert_eq!(received[1].1.as_deref(), Some(&b"null"[..]), "JSON-null tombstone is 4 bytes");
    assert_eq!(received[2].1, None, "Kafka-null tombstone has no value");
    assert_eq!(received[2].0.as_deref(), Some(&b"Rental:1"[..]));
}

/// librdkafka's default partitioner, which dionysus-rb's producer uses with the partition
/// key, picks the same partition as `dionysus::kafka::partition_for`.
#[tokio::test(flavor = "multi_thread")]
async fn partition_choice_matches_librdkafkas_default_partitioner() {
    let kafka = kafka_config();
    let topic = create_topic(&kafka, "partitions", 12).await;
    let producer = dionysus::kafka::producer(&kafka).unwrap();
    for account_id in 0..40 {
        let partition_key = account_id.to_string();
        let delivery = producer
            .send(FutureRecord::to(&topic).key(&partition_key).payload("{}"), Timeout::After(Duration::from_secs(10)))
            .await
            .map_err(|(error, _)| error)
            .unwrap();
        assert_eq!(
            delivery.partition,
            dionysus::kafka::partition_for(partition_key.as_bytes(), 12),
            "partition key {partition_key}"
        );
    }
}
