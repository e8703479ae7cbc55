//! Avro topics end to end, against real PostgreSQL, the broker and the test schema registry:
//! outbox rows published by the relay as framed Avro records (value and key schemas
//! registered), read back by a replica consumer into a replica equal to the source, a
//! destroyed record as a tombstone, a newer writer's schema read by an older reader, a
//! registry that goes down (no row lost, no message dead-lettered) and messages that do not
//! decode (dead-lettered with their original bytes).

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use dionysus::__internals::consumer::InboundMessage;
use dionysus::avro::{codec, framing};
use dionysus::config::Config;
use dionysus::config::SchemaBackend;
use dionysus::consumer::replica::{Replica, ReplicaDescriptor, Replicas};
use dionysus::consumer::{Consumer, ConsumerError};
use dionysus::outbox::Outbox;
use dionysus::registry::model::Record;
use dionysus::registry::model::{Model, PartitionKeySource, Publication};
use dionysus::registry::{KeyConfig, Registry, Tombstone, TopicDeclaration, TopicFormat};
use dionysus::relay::Relay;
use dionysus::serialize::{serialize_erased, DefaultSerializer, SerializeError, Sideloads};
use dionysus::testing::TestRegistry;
use dionysus_tests::{create_topic, eventually, kafka_config, unique_name, TestDb};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

diesel::table! {
    avro_source_rentals (id) {
        id -> BigInt,
        account_id -> BigInt,
        name -> Text,
        daily_price -> Nullable<Double>,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    avro_replica_rentals (synced_id) {
        synced_id -> BigInt,
        synced_updated_at -> Nullable<Timestamptz>,
        name -> Text,
        daily_price -> Nullable<Double>,
    }
}

const TABLES: &str = "
    CREATE TABLE avro_source_rentals (id bigint PRIMARY KEY, account_id bigint NOT NULL, name text NOT NULL,
        daily_price double precision, updated_at timestamptz NOT NULL);
    CREATE TABLE avro_replica_rentals (synced_id bigint PRIMARY KEY, synced_updated_at timestamptz,
        name text NOT NULL, daily_price double precision);
";

/// The producer's model; published on the per-test topics the registries below declare.
#[derive(Debug, Clone, Queryable, Selectable, Identifiable, Serialize, dionysus::Publishable)]
#[diesel(table_name = avro_source_rentals)]
#[publishable(model_name = "AvroSourceRental", soft_delete = false)]
pub struct AvroSourceRental {
    pub id: i64,
    pub account_id: i64,
    pub name: String,
    pub daily_price: Option<f64>,
    pub updated_at: DateTime<Utc>,
}

/// The consumer's replica of `com.example.Rental` records. Each test reads its own topic:
/// `Setup::replica_model` is this declaration moved to it, and its model names the records.
#[allow(dead_code)]
#[derive(dionysus::Consume)]
#[diesel(table_name = avro_replica_rentals)]
#[consume(topic = "avro_flow_rentals", model = "AvroRental", schema = "com.example.Rental")]
pub struct AvroReplicaRental {
    pub synced_id: i64,
    pub synced_updated_at: Option<DateTime<Utc>>,
    pub name: String,
    pub daily_price: Option<f64>,
}

/// A record's attributes as the publication serializes them.
type SerializeFn = fn(&dyn Record, &Sideloads) -> Result<serde_json::Value, SerializeError>;

/// The default serializer, except that a record named "broken" loses its `name`.
fn breaking(record: &dyn Record, sideloads: &Sideloads) -> Result<serde_json::Value, SerializeError> {
    let mut attributes = serialize_erased::<AvroSourceRental, DefaultSerializer>(record, sideloads)?;
    if attributes["name"] == "broken" {
        attributes.as_object_mut().map(|object| object.remove("name"));
    }
    Ok(attributes)
}

/// An Avro topic of `com.example.Rental` records keyed by their `id` field, and the source
/// model published on it.
fn avro_registry(topic: &str, serialize: SerializeFn) -> &'static Registry {
    let name: &'static str = Box::leak(topic.to_owned().into_boxed_str());
    let declaration: &'static TopicDeclaration = Box::leak(Box::new(TopicDeclaration {
        namespace: None,
        name,
        full_name: name,
        partition_key: None,
        partition_key_with: None,
        partitions: Some(1),
        replication_factor: None,
        genesis_replica: false,
        tombstone: Tombstone::KafkaNull,
        format: TopicFormat::Avro { schema: "com.example.Rental", key: KeyConfig::Field("id") },
        declared_by: "avro_flow::avro_registry",
        location: file!(),
    }));
    let publication: &'static Publication = Box::leak(Box::new(Publication {
        model: <AvroSourceRental as Model>::entry(),
        topic: name,
        partition_key: PartitionKeySource::Attribute("account_id"),
        with: &[],
        observe: &[],
        delayed: &[],
        serialize,
        schema: Some("com.example.Rental"),
        location: file!(),
    }));
    Box::leak(Box::new(Registry::new([declaration], []).with_publications([publication])))
}

struct Setup {
    db: TestDb,
    conn: AsyncPgConnection,
    topic: String,
    dead_letters: String,
    declarations: &'static Registry,
    schemas: TestRegistry,
    kafka: dionysus::config::KafkaConfig,
    backend: SchemaBackend,
    /// [`AvroReplicaRental`]'s declaration, on this test's topic.
    replica_model: &'static ReplicaDescriptor,
}

async fn setup() -> Setup {
    setup_with(SchemaBackend::Registry, serialize_erased::<AvroSourceRental, DefaultSerializer>).await
}

async fn setup_with(backend: SchemaBackend, serialize: SerializeFn) -> Setup {
    let db = TestDb::migrated().await;
    let mut conn = db.connection().await;
    conn.batch_execute(TABLES).await.unwrap();
    let kafka = kafka_config();
    let topic = create_topic(&kafka, "avro_flow", 1).await;
    let dead_letters = create_topic(&kafka, "avro_flow_dlq", 1).await;
    let declarations = avro_registry(&topic, serialize);
    let schemas = TestRegistry::start().await.unwrap();
    let replica_model = Box::leak(Box::new(ReplicaDescriptor {
        topic: Box::leak(topic.clone().into_boxed_str()),
        ..AvroReplicaRental::DESCRIPTOR.clone()
    }));
    Setup { db, conn, topic, dead_letters, declarations, schemas, kafka, backend, replica_model }
}

impl Setup {
    fn config(&self) -> Config {
        let mut config = Config::default();
        config.database_url = self.db.url.clone();
        config.kafka = self.kafka.clone();
        config.producer.idle_sleep = Duration::from_millis(20);
        config.producer.retry_backoff_base = Duration::from_millis(20);
        config.producer.retry_backoff_cap = Duration::from_millis(100);
        config.producer.max_attempts = 3;
        config.producer.retention = None;
        config.consumer.dead_letter_topic = self.dead_letters.clone();
        config.schemas.registry_url = self.schemas.url();
        config.schemas.backend = self.backend;
        config
    }

    fn relay(&self) -> Relay {
        Relay::builder(self.config()).registry(self.declarations).worker_prefix(unique_name("w")).build().unwrap()
    }

    fn consumer(&self) -> Consumer {
        Consumer::builder(self.config())
            .pool(self.db.pool(4))
            .replicas(Replicas::new([self.replica_model]))
            .registry(self.declarations)
            .topic(&self.topic)
            .handlers(false)
            .build()
            .unwrap()
    }

    /// Inserts source rows `(id, name, price, updated_at second)` with their outbox rows.
    async fn create(&mut self, rows: &[(i64, &str, Option<f64>, i64)]) -> Vec<AvroSourceRental> {
        let mut created = Vec::new();
        for (id, name, price, at) in rows {
            let record = AvroSourceRental {
                id: *id,
                account_id: id % 3,
                name: (*name).to_owned(),
                daily_price: *price,
                updated_at: at_second(*at),
            };
            diesel::insert_into(avro_source_rentals::table)
                .values((
                    avro_source_rentals::id.eq(record.id),
                    avro_source_rentals::account_id.eq(record.account_id),
                    avro_source_rentals::name.eq(&record.name),
                    avro_source_rentals::daily_price.eq(record.daily_price),
                    avro_source_rentals::updated_at.eq(record.updated_at),
                ))
                .execute(&mut self.conn)
                .await
                .unwrap();
            let config = self.config();
            Outbox::new(self.declarations, &config.producer).created(&mut self.conn, &record).await.unwrap();
            created.push(record);
        }
        created
    }

    async fn source(&mut self) -> Vec<Row> {
        avro_source_rentals::table
            .order(avro_source_rentals::id)
            .select((
                avro_source_rentals::id,
                avro_source_rentals::name,
                avro_source_rentals::daily_price,
                avro_source_rentals::updated_at,
            ))
            .load(&mut self.conn)
            .await
            .unwrap()
    }

    async fn replica(&mut self) -> Vec<Row> {
        #[allow(clippy::type_complexity, reason = "the four compared columns, as loaded")]
        let rows: Vec<(i64, String, Option<f64>, Option<DateTime<Utc>>)> = avro_replica_rentals::table
            .order(avro_replica_rentals::synced_id)
            .select((
                avro_replica_rentals::synced_id,
                avro_replica_rentals::name,
                avro_replica_rentals::daily_price,
                avro_replica_rentals::synced_updated_at,
            ))
            .load(&mut self.conn)
            .await
            .unwrap();
        rows.into_iter().map(|(id, name, price, at)| (id, name, price, at.unwrap_or_default())).collect()
    }

    async fn pending(&mut self) -> Vec<(Option<String>, bool)> {
        #[derive(QueryableByName)]
        struct Pending {
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
            error_class: Option<String>,
            #[diesel(sql_type = diesel::sql_types::Bool)]
            parked: bool,
        }
        let rows: Vec<Pending> = diesel::sql_query(
            "SELECT error_class, failed_at IS NOT NULL AS parked FROM dionysus_outbox WHERE published_at IS NULL ORDER BY id",
        )
        .load(&mut self.conn)
        .await
        .unwrap();
        rows.into_iter().map(|row| (row.error_class, row.parked)).collect()
    }

    /// Drains the outbox until no row is pending.
    async fn publish_all(&mut self) {
        let relay = self.relay();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            relay.drain().await.unwrap();
            if self.pending().await.is_empty() {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "rows left: {:?}", self.pending().await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How many messages the dead-letter topic holds.
    fn dead_letter_count(&self) -> i64 {
        let consumer: BaseConsumer =
            dionysus_tests::consumer_config(&self.kafka, &unique_name("avro_dlq_watermarks")).create().unwrap();
        let (low, high) = consumer.fetch_watermarks(&self.dead_letters, 0, Duration::from_secs(10)).unwrap();
        high - low
    }
}

/// A row as compared: id, name, price, last update.
type Row = (i64, String, Option<f64>, DateTime<Utc>);

fn at_second(second: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_704_067_200 + second, 0).unwrap()
}

/// Runs `consumer` until `done` holds for the replica, then stops it.
async fn consume_until(setup: &mut Setup, consumer: &Consumer, done: impl Fn(&[Row]) -> bool) {
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (consumer, shutdown) = (consumer.clone(), shutdown.clone());
        async move { consumer.run(shutdown).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let replica = setup.replica().await;
        if done(&replica) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the replica did not catch up: {replica:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// Publishes three records, a replica of them, then a tombstone for one of them.
async fn round_trip(mut setup: Setup) -> Setup {
    let created = setup
        .create(&[(1, "Villa Saganaki", Some(120.5), 1), (2, "Casa Azul", None, 2), (3, "Chalet", Some(80.0), 3)])
        .await;
    setup.publish_all().await;
    let consumer = setup.consumer();
    let source = setup.source().await;
    consume_until(&mut setup, &consumer, |replica| replica == source.as_slice()).await;

    // A destroyed record: a tombstone with its key deletes the replica row.
    diesel::delete(avro_source_rentals::table.find(2)).execute(&mut setup.conn).await.unwrap();
    let config = setup.config();
    Outbox::new(setup.declarations, &config.producer).destroyed(&mut setup.conn, &created[1]).await.unwrap();
    setup.publish_all().await;
    let source = setup.source().await;
    assert_eq!(source.len(), 2);
    consume_until(&mut setup, &consumer, |replica| replica == source.as_slice()).await;
    assert_eq!(setup.dead_letter_count(), 0);
    setup
}

/// The first byte and the value of the topic's first message.
fn first_message(setup: &Setup) -> Vec<u8> {
    use rdkafka::message::Message as _;
    let consumer: BaseConsumer =
        dionysus_tests::consumer_config(&setup.kafka, &unique_name("avro_first")).create().unwrap();
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment.add_partition_offset(&setup.topic, 0, rdkafka::Offset::Beginning).unwrap();
    consumer.assign(&assignment).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(message) = consumer.poll(Duration::from_millis(500)) {
            return message.unwrap().payload().unwrap().to_vec();
        }
        assert!(std::time::Instant::now() < deadline, "no message on {}", setup.topic);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_framed_records_reach_the_replica_and_a_tombstone_deletes_by_key() {
    let setup = round_trip(setup().await).await;
    // The value and the key schema were registered under the topic's subjects, and the
    // value is framed with the value schema's id.
    let subjects = setup.schemas.subjects();
    assert_eq!(subjects.get(&format!("{}-value", setup.topic)), Some(&1), "{subjects:?}");
    assert_eq!(subjects.get(&format!("{}-key", setup.topic)), Some(&1), "{subjects:?}");
    let client = dionysus::avro::registry::RegistryClient::new(&setup.schemas.url()).unwrap();
    let latest = client.latest(&format!("{}-value", setup.topic)).await.unwrap().unwrap();
    let (id, _) = framing::unframe(&first_message(&setup)).map(|(id, datum)| (id, datum.len())).unwrap();
    assert_eq!(id, latest.id);
}

#[tokio::test(flavor = "multi_thread")]
async fn local_records_need_no_registry() {
    let mut setup = setup_with(SchemaBackend::Local, serialize_erased::<AvroSourceRental, DefaultSerializer>).await;
    setup.schemas.stop();
    let setup = round_trip(setup).await;
    let value = first_message(&setup);
    let schema = dionysus::avro::schemas::LocalSchemas::global().unwrap().get("com.example.Rental").unwrap();
    assert_eq!(codec::decode(schema, schema, &value).unwrap()["name"], "Villa Saganaki", "a bare datum");
}

/// With the validation backend records travel as JSON checked against the schema; one that
/// does not fit fails its row with the reason, and the others are published and replicated.
#[tokio::test(flavor = "multi_thread")]
async fn validated_json_records_are_checked_before_they_are_published() {
    let mut setup = setup_with(SchemaBackend::Validation, breaking).await;
    setup.schemas.stop();
    setup.create(&[(1, "Villa", Some(10.0), 1), (2, "broken", None, 2), (3, "Chalet", None, 3)]).await;
    let relay = setup.relay();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while setup.pending().await.iter().any(|(_, parked)| !parked) {
        assert!(tokio::time::Instant::now() < deadline, "rows left: {:?}", setup.pending().await);
        relay.drain().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(setup.pending().await, [(Some("AvroEncodeError".to_owned()), true)]);
    let message: String = diesel::sql_query("SELECT error_message FROM dionysus_outbox WHERE failed_at IS NOT NULL")
        .get_result::<ErrorMessage>(&mut setup.conn)
        .await
        .unwrap()
        .error_message;
    assert!(message.contains("`name` has no value and no default"), "{message}");
    let value: serde_json::Value = serde_json::from_slice(&first_message(&setup)).unwrap();
    assert_eq!(value["name"], "Villa");

    let consumer = setup.consumer();
    consume_until(&mut setup, &consumer, |replica| replica.len() == 2).await;
    let names: Vec<String> = setup.replica().await.into_iter().map(|row| row.1).collect();
    assert_eq!(names, ["Villa", "Chalet"]);
}

#[derive(QueryableByName)]
struct ErrorMessage {
    #[diesel(sql_type = diesel::sql_types::Text)]
    error_message: String,
}

const RENTAL_WITH_FLOORS: &str = r#"{"type": "record", "name": "Rental", "namespace": "com.example", "fields": [
    {"name": "id", "type": "long"},
    {"name": "account_id", "type": "long"},
    {"name": "name", "type": "string"},
    {"name": "floors", "type": "int", "default": 1},
    {"name": "daily_price", "type": ["null", "double"], "default": null},
    {"name": "updated_at", "type": {"type": "long", "logicalType": "timestamp-micros"}}
]}"#;

fn message(topic: &str, offset: i64, key: Option<&[u8]>, payload: Option<Vec<u8>>) -> InboundMessage {
    InboundMessage { topic: topic.to_owned(), partition: 0, offset, key: key.map(<[u8]>::to_vec), payload }
}

/// A record written with a newer schema (an added field with a default, one field less) is
/// read by the consumer's older schema; bytes that are not a registry message, or name a
/// schema id the registry does not know, are dead-lettered with their original bytes.
#[tokio::test(flavor = "multi_thread")]
async fn a_newer_writer_schema_is_read_and_undecodable_messages_are_dead_lettered() {
    let mut setup = setup().await;
    let client = dionysus::avro::registry::RegistryClient::new(&setup.schemas.url()).unwrap();
    let id = client.register(&format!("{}-value", setup.topic), RENTAL_WITH_FLOORS).await.unwrap();
    let writer = dionysus::avro::Schema::parse_str(RENTAL_WITH_FLOORS).unwrap();
    let record =
        json!({"id": 7, "account_id": 1, "name": "Tower", "floors": 12, "updated_at": "2024-01-01T00:00:07.000Z"});
    let datum = codec::encode(&writer, &record, &codec::AutoFields::default()).unwrap();
    let unknown_id = framing::frame(9_999, &datum);
    let messages = [
        message(&setup.topic, 0, Some(b"7"), Some(framing::frame(id, &datum))),
        message(&setup.topic, 1, Some(b"8"), Some(b"{\"id\": 8}".to_vec())),
        message(&setup.topic, 2, Some(b"9"), Some(unknown_id.clone())),
    ];
    let outcome = setup.consumer().process_batch(&messages).await.unwrap();
    assert_eq!(setup.replica().await, [(7, "Tower".to_owned(), None, at_second(7))]);
    let dead: Vec<(i64, &str, Option<Vec<u8>>)> = outcome
        .dead_letters
        .iter()
        .map(|dead| (dead.message.offset, dead.reason, dead.message.payload.clone()))
        .collect();
    assert_eq!(
        dead,
        [(1, "undecodable_avro", Some(b"{\"id\": 8}".to_vec())), (2, "undecodable_avro", Some(unknown_id))]
    );
    assert!(outcome.dead_letters[0].error.contains("magic byte"), "{}", outcome.dead_letters[0].error);
    assert!(outcome.dead_letters[1].error.contains("9999"), "{}", outcome.dead_letters[1].error);
}

/// While the registry is down the relay keeps the rows (retried, never parked) and the
/// consumer's partition waits (nothing dead-lettered, no offset stored); once it is back both
/// catch up and the replica equals the source.
#[tokio::test(flavor = "multi_thread")]
async fn a_registry_down_loses_nothing_and_dead_letters_nothing() {
    let mut setup = setup().await;
    setup.schemas.stop();
    setup.create(&[(1, "One", Some(1.0), 1), (2, "Two", None, 2)]).await;
    let relay = setup.relay();
    for _ in 0..4 {
        let report = relay.drain().await.unwrap();
        assert_eq!(report.published, 0);
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    let pending = setup.pending().await;
    assert_eq!(pending.len(), 2);
    assert!(
        pending.iter().all(|(class, parked)| class.as_deref() == Some("SchemaRegistryUnavailable") && !parked),
        "retried past max_attempts without being parked: {pending:?}"
    );
    setup.schemas.resume().await.unwrap();
    setup.publish_all().await;

    // The consumer starts while the registry is down again: it cannot know the writer's schema.
    setup.schemas.stop();
    let consumer = setup.consumer();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (consumer, shutdown) = (consumer.clone(), shutdown.clone());
        async move { consumer.run(shutdown).await }
    });
    // `/health` names the partition and the registry.
    let unhealthy = eventually(Duration::from_secs(30), || {
        let consumer = consumer.clone();
        async move {
            let problem = consumer.check_health().err()?.to_string();
            problem.contains("schema registry cannot be reached").then_some(problem)
        }
    })
    .await;
    assert!(unhealthy.contains(&format!("partition {}/0 stalled", setup.topic)), "{unhealthy}");
    assert!(setup.replica().await.is_empty());
    assert_eq!(setup.dead_letter_count(), 0);

    setup.schemas.resume().await.unwrap();
    let source = setup.source().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while setup.replica().await != source {
        assert!(tokio::time::Instant::now() < deadline, "the replica did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(setup.dead_letter_count(), 0);
}

/// The consumer's batch fails (and stores nothing) while the registry is down.
#[tokio::test]
async fn a_batch_read_while_the_registry_is_down_fails_whole() {
    let mut setup = setup().await;
    let client = dionysus::avro::registry::RegistryClient::new(&setup.schemas.url()).unwrap();
    let id = client.register(&format!("{}-value", setup.topic), RENTAL_WITH_FLOORS).await.unwrap();
    let writer = dionysus::avro::Schema::parse_str(RENTAL_WITH_FLOORS).unwrap();
    let record = json!({"id": 3, "account_id": 1, "name": "Hut", "updated_at": "2024-01-01T00:00:03.000Z"});
    let framed = framing::frame(id, &codec::encode(&writer, &record, &codec::AutoFields::default()).unwrap());
    let batch = [message(&setup.topic, 0, Some(b"3"), Some(framed))];
    setup.schemas.stop();
    let consumer = setup.consumer();
    let error = consumer.process_batch(&batch).await.unwrap_err();
    assert!(matches!(error, ConsumerError::SchemaRegistry { .. }), "{error}");
    assert!(setup.replica().await.is_empty());
    setup.schemas.resume().await.unwrap();
    let outcome = consumer.process_batch(&batch).await.unwrap();
    assert!(outcome.dead_letters.is_empty());
    assert_eq!(setup.replica().await, [(3, "Hut".to_owned(), None, at_second(3))]);
}
