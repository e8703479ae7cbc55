use dionysus::Topic;

#[dionysus::topic(
    namespace = "v3",
    name = "rentals",
    partition_key = "account_id",
    partitions = 12,
    replication_factor = 3,
    genesis_replica = true,
    tombstone = "kafka_null"
)]
pub struct Rentals;

#[dionysus::topic(name = "accounts", partition_key = id, genesis_replica)]
pub struct Accounts;

fn booking_key(record: &dyn dionysus::registry::model::Record) -> Option<String> {
    record.attribute("rental_id").map(|id| id.to_string())
}

#[dionysus::topic(name = "bookings", partition_key_with = booking_key)]
pub struct Bookings;

fn main() {
    assert_eq!(Rentals::NAME, "v3_rentals");
    assert_eq!(Accounts::NAME, "accounts");
    assert!(Bookings::DECLARATION.partition_key_with.is_some());
    assert_eq!(Rentals::DECLARATION.genesis_name().as_deref(), Some("v3_rentals_genesis"));
    assert_eq!(Rentals::DECLARATION.tombstone, dionysus::registry::Tombstone::KafkaNull);
    dionysus::Registry::global().validate().unwrap();
}
