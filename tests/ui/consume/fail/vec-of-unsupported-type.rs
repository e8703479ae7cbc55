use chrono::{DateTime, Utc};

diesel::table! {
    rentals (synced_id) {
        synced_id -> BigInt,
        synced_updated_at -> Nullable<Timestamptz>,
        prices -> Array<Jsonb>,
    }
}

pub struct Price {
    pub cents: i64,
}

#[derive(dionysus::Consume)]
#[diesel(table_name = rentals)]
#[consume(topic = "v3_rentals", model = "Rental")]
pub struct Rental {
    pub synced_id: i64,
    pub synced_updated_at: Option<DateTime<Utc>>,
    pub prices: Vec<Price>,
}

fn main() {}
