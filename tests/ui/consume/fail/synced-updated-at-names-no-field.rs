use chrono::{DateTime, Utc};

diesel::table! {
    rentals (synced_id) {
        synced_id -> BigInt,
        remote_updated_at -> Nullable<Timestamptz>,
        name -> Nullable<Text>,
    }
}

#[derive(dionysus::Consume)]
#[diesel(table_name = rentals)]
#[consume(topic = "v3_rentals", model = "Rental", synced_updated_at = "remote_update_at")]
pub struct Rental {
    pub synced_id: i64,
    pub remote_updated_at: Option<DateTime<Utc>>,
    pub name: Option<String>,
}

fn main() {}
