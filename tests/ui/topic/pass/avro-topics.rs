// Avro topics: the schema is read from `schemas/com/example/Rental.avsc` at compile time, and
// each key config is accepted.
use dionysus::registry::{KeyConfig, Topic, TopicFormat};

#[dionysus::topic(namespace = "v3", name = "rentals", format = "avro", schema = "com.example.Rental")]
pub struct Rentals;

#[dionysus::topic(name = "rentals_by_field", format = "avro", schema = "com.example.Rental", key(field = id))]
pub struct RentalsByField;

#[dionysus::topic(name = "rentals_keyless", schema = "com.example.Rental", key(none))]
pub struct RentalsKeyless;

#[dionysus::topic(
    name = "rentals_by_key_schema",
    format = "avro",
    schema = "com.example.Rental",
    key(schema = "com.example.RentalKey")
)]
pub struct RentalsByKeySchema;

fn main() {
    assert_eq!(Rentals::DECLARATION.format, TopicFormat::Avro { schema: "com.example.Rental", key: KeyConfig::Plain });
    assert_eq!(RentalsByField::DECLARATION.format.schema(), Some("com.example.Rental"));
    assert!(matches!(RentalsByField::DECLARATION.format, TopicFormat::Avro { key: KeyConfig::Field("id"), .. }));
    assert!(matches!(RentalsKeyless::DECLARATION.format, TopicFormat::Avro { key: KeyConfig::None, .. }));
    assert!(matches!(
        RentalsByKeySchema::DECLARATION.format,
        TopicFormat::Avro { key: KeyConfig::Schema("com.example.RentalKey"), .. }
    ));
}
