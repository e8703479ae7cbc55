// Partition key fields: integers through aliases and `Option`s, text only with the explicit
// `partition_key_to_i`, and a topic's `partition_key` checked on the models published on it
// (a model without that field has no partition key from it, as before).
use diesel::prelude::*;
use serde::Serialize;

diesel::table! { rentals (id) { id -> BigInt, account_id -> Nullable<BigInt>, code -> Text } }
diesel::table! { bookings (id) { id -> BigInt, account_id -> Integer, code -> Text } }
diesel::table! { notes (id) { id -> BigInt, body -> Text } }
diesel::allow_tables_to_appear_in_same_query!(rentals, bookings, notes);

type AccountId = i64;

#[dionysus::topic(namespace = "v3", name = "rentals", partition_key = "account_id")]
pub struct Rentals;

#[dionysus::topic(namespace = "v3", name = "codes", partition_key = "code")]
pub struct Codes;

#[derive(Queryable, Selectable, Identifiable, Serialize, dionysus::Publishable)]
#[diesel(table_name = rentals)]
#[publish(topic = Rentals)]
#[publish(topic = "v3_rentals_by_account", partition_key = account_id)]
#[publish(topic = "v3_rentals_by_code", partition_key = code, partition_key_to_i)]
#[publish(topic = Codes, partition_key_to_i)]
pub struct Rental {
    pub id: i64,
    pub account_id: Option<AccountId>,
    pub code: String,
}

#[derive(Queryable, Selectable, Identifiable, Serialize, dionysus::Publishable)]
#[diesel(table_name = bookings)]
#[publish(topic = Rentals)]
pub struct Booking {
    pub id: i64,
    pub account_id: i32,
    pub code: String,
}

#[derive(Queryable, Selectable, Identifiable, Serialize, dionysus::Publishable)]
#[diesel(table_name = notes)]
#[publish(topic = Rentals)]
pub struct Note {
    pub id: i64,
    pub body: String,
}

fn main() {
    use dionysus::registry::model::PartitionKeySource;
    use dionysus::Publishable;
    assert!(matches!(Rental::PUBLICATIONS[1].partition_key, PartitionKeySource::Attribute("account_id")));
    assert!(matches!(Rental::PUBLICATIONS[2].partition_key, PartitionKeySource::Attribute("code")));
    assert!(matches!(Rental::PUBLICATIONS[3].partition_key, PartitionKeySource::Inherit));
    assert_eq!(Note::PUBLICATIONS.len(), 1);
}
