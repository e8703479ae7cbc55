use chrono::{DateTime, Utc};

diesel::table! {
    orders (synced_id) {
        synced_id -> BigInt,
        synced_updated_at -> Nullable<Timestamptz>,
        status -> Text,
    }
}

#[derive(dionysus::Consume)]
#[diesel(table_name = orders)]
#[consume(topic = "v3_orders", model = "Order", cancel = set(column = "stauts", value = "cancelled"))]
pub struct Order {
    pub synced_id: i64,
    pub synced_updated_at: Option<DateTime<Utc>>,
    pub status: String,
}

fn main() {}
