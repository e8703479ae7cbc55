// A type is judged by what it is, not by its name: a `Value` of one's own is no JSON value.
use chrono::{DateTime, Utc};

diesel::table! {
    rentals (synced_id) {
        synced_id -> BigInt,
        synced_updated_at -> Nullable<Timestamptz>,
        details -> Nullable<Jsonb>,
    }
}

mod json {
    pub struct Value;
}

#[derive(dionysus::Consume)]
#[diesel(table_name = rentals)]
#[consume(topic = "v3_rentals", model = "Rental")]
pub struct Rental {
    pub synced_id: i64,
    pub synced_updated_at: Option<DateTime<Utc>>,
    pub details: Option<json::Value>,
}

fn main() {}
