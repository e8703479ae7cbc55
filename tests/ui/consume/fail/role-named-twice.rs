use chrono::{DateTime, Utc};

diesel::table! {
    rentals (remote_id) {
        remote_id -> BigInt,
        remote_updated_at -> Nullable<Timestamptz>,
    }
}

#[derive(dionysus::Consume)]
#[diesel(table_name = rentals)]
#[consume(topic = "v3_rentals", model = "Rental", synced_updated_at = "remote_updated_at")]
pub struct Rental {
    #[consume(synced_id)]
    pub remote_id: i64,
    #[consume(synced_updated_at)]
    pub remote_updated_at: Option<DateTime<Utc>>,
}

fn main() {}
