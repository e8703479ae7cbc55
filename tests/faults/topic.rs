//! The suite's own Kafka clients: poison messages produced straight onto the topic, and the
//! topic and the dead-letter topic read back from the beginning.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use dionysus::config::KafkaConfig;
use dionysus::consumer::DeadLetterHeaders;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureRecord;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

/// How long reading goes on past the high watermarks without a new message.
const QUIET: Duration = Duration::from_secs(2);

/// One message as read back.
pub struct Read {
    pub partition: i32,
    pub offset: i64,
    pub value: Option<Vec<u8>>,
    /// Source partition and offset, for a dead letter.
    pub source: Option<(i32, i64)>,
}

/// Values no consumer can apply: not JSON, cut short, invalid UTF-8, the wrong shape, an
/// unknown model, a known model with fields of the wrong type.
const POISON: [&[u8]; 6] = [
    b"this is not json",
    br#"{"message":[{"event":"wallet_updated","model_name":"Wal"#,
    b"\xff\xfe\x00\x9c\xc3\x28",
    br#"{"message":"nope"}"#,
    br#"{"message":[{"event":"gadget_created","model_name":"Gadget","data":[{"id":1}]}]}"#,
    br#"{"message":[{"event":"wallet_updated","model_name":"Wallet","data":[{"id":"seven","seq":[],"updated_at":5}]}]}"#,
];

/// Produces every poison value to each partition of `topic`; returns where they landed.
pub async fn produce_poison(kafka: &KafkaConfig, topic: &str, partitions: i32) -> BTreeSet<(i32, i64)> {
    let producer: dionysus::kafka::Producer = dionysus::kafka::producer(kafka).expect("a poison producer");
    let mut landed = BTreeSet::new();
    for partition in 0..partitions {
        for (index, value) in POISON.iter().enumerate() {
            let key = format!("Wallet:{}", 1000 + index);
            let record = FutureRecord::to(topic).partition(partition).key(&key).payload(*value);
            let delivery = producer
                .send(record, Duration::from_secs(10))
                .await
                .map_err(|(error, _)| error)
                .expect("poison produced");
            landed.insert((delivery.partition, delivery.offset));
        }
    }
    landed
}

/// Every message of `topic` from the beginning up to its end when called, partition by
/// partition in offset order.
pub fn read_all(kafka: &KafkaConfig, topic: &str) -> BTreeMap<i32, Vec<Read>> {
    let mut config = dionysus::kafka::client_config(kafka);
    config
        .set("group.id", dionysus_tests::unique_name("faults_reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    let consumer: BaseConsumer = config.create().expect("a reader");
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("topic metadata");
    let partitions: Vec<i32> =
        metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect::<Vec<_>>();
    let mut ends = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for partition in &partitions {
        let (low, high) =
            consumer.fetch_watermarks(topic, *partition, Duration::from_secs(10)).expect("partition watermarks");
        if high > low {
            ends.insert(*partition, high);
        }
        assignment.add_partition_offset(topic, *partition, Offset::Beginning).expect("an assignment");
    }
    let mut read: BTreeMap<i32, Vec<Read>> = partitions.iter().map(|p| (*p, Vec::new())).collect();
    consumer.assign(&assignment).expect("assigning the partitions");
    let deadline = Instant::now() + Duration::from_secs(60);
    let reached = |read: &BTreeMap<i32, Vec<Read>>| {
        ends.iter().all(|(partition, end)| read[partition].last().is_some_and(|last| last.offset + 1 >= *end))
    };
    // Past the high watermarks, read on until nothing came for a while: the broker's
    // watermark has been seen one behind the last message.
    let mut quiet_since: Option<Instant> = None;
    while quiet_since.is_none_or(|since| since.elapsed() < QUIET) {
        assert!(Instant::now() < deadline, "reading {topic} back took over 60 s");
        if quiet_since.is_none() && reached(&read) {
            quiet_since = Some(Instant::now());
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                let source = message.headers().and_then(|headers| {
                    let header = |name: &str| {
                        headers
                            .iter()
                            .find(|h| h.key == name)
                            .and_then(|h| h.value)
                            .and_then(|v| std::str::from_utf8(v).ok())
                            .and_then(|v| v.parse::<i64>().ok())
                    };
                    Some((
                        i32::try_from(header(DeadLetterHeaders::PARTITION)?).ok()?,
                        header(DeadLetterHeaders::OFFSET)?,
                    ))
                });
                if let Some(since) = quiet_since.as_mut() {
                    *since = Instant::now();
                }
                if let Some(list) = read.get_mut(&message.partition()) {
                    list.push(Read {
                        partition: message.partition(),
                        offset: message.offset(),
                        value: message.payload().map(<[u8]>::to_vec),
                        source,
                    });
                }
            }
            Some(Err(error)) => panic!("reading {topic} back: {error}"),
            None => {}
        }
    }
    read
}
