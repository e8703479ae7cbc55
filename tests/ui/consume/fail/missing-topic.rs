use chrono::{DateTime, Utc};

diesel::table! {
    rentals (synced_id) {
        synced_id -> BigInt,
        synced_updated_at -> Nullable<Timestamptz>,
        name -> Nullable<Text>,
    }
}

#[derive(dionysus::Consume)]
#[diesel(table_name = rentals)]
#[consume(model = "Rental")]
pub struct Rental {
    pub synced_id: i64,
    pub synced_updated_at: Option<DateTime<Utc>>,
    pub name: Option<String>,
}

fn main() {}
