// A replica of records of `com.example.Rental`: the synced id is read from `id`, the guard
// from `updated_at`, and the nullable `daily_price` into an `Option`.
use chrono::{DateTime, Utc};

diesel::table! {
    rentals (synced_id) {
        synced_id -> BigInt,
        synced_updated_at -> Nullable<Timestamptz>,
        name -> Text,
        daily_price -> Nullable<Double>,
    }
}

#[derive(dionysus::Consume)]
#[diesel(table_name = rentals)]
#[consume(topic = "v3_rentals", model = "Rental", schema = "com.example.Rental")]
pub struct Rental {
    pub synced_id: i64,
    pub synced_updated_at: Option<DateTime<Utc>>,
    pub name: String,
    pub daily_price: Option<f64>,
}

fn main() {}
