// A model published on an Avro topic: its fields fit `com.example.Rental` (`daily_price` has a
// default, `message_id` and `timestamp` are filled by the producer).
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;

diesel::table! { rentals (id) { id -> BigInt, account_id -> BigInt, name -> Text, updated_at -> Timestamptz } }

#[dionysus::topic(namespace = "v3", name = "rentals", format = "avro", schema = "com.example.Rental")]
pub struct Rentals;

#[derive(Queryable, Selectable, Identifiable, Serialize, dionysus::Publishable)]
#[diesel(table_name = rentals)]
#[publish(topic = Rentals, schema = "com.example.Rental")]
pub struct Rental {
    pub id: i64,
    pub account_id: i64,
    pub name: String,
    pub updated_at: DateTime<Utc>,
}

fn main() {
    use dionysus::Publishable;
    assert_eq!(Rental::PUBLICATIONS[0].schema, Some("com.example.Rental"));
}
