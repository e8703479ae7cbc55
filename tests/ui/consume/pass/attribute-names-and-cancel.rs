// Attribute roles named per replica (a struct key, field flags), no `synced_updated_at`
// (the guard then uses `synced_created_at`), and a cancel strategy without soft delete.
use chrono::{DateTime, Utc};

diesel::table! {
    orders (remote_id) {
        remote_id -> BigInt,
        remote_created_at -> Nullable<Timestamptz>,
        status -> Text,
        attempts -> Integer,
        payload -> Nullable<Jsonb>,
    }
}

#[derive(dionysus::Consume)]
#[diesel(table_name = orders)]
#[consume(
    topic = "v3_orders",
    model = "Order",
    synced_created_at = remote_created_at,
    cancel = set(column = "status", value = "cancelled")
)]
pub struct Order {
    #[consume(synced_id)]
    pub remote_id: i64,
    pub remote_created_at: Option<DateTime<Utc>>,
    pub status: String,
    pub attempts: i32,
    #[consume(synced_data)]
    pub payload: Option<serde_json::Value>,
}

fn main() {
    use dionysus::consumer::replica::{CancelValue, DestroyStrategy, Replica};
    let descriptor = Order::DESCRIPTOR;
    assert_eq!(descriptor.synced_id, "remote_id");
    assert_eq!(descriptor.synced_updated_at, None);
    assert_eq!(descriptor.synced_created_at, Some("remote_created_at"));
    assert_eq!(descriptor.guard_column(), Some("remote_created_at"));
    assert_eq!(descriptor.synced_data, Some("payload"));
    assert_eq!(descriptor.strategy, DestroyStrategy::Set { column: "status", value: CancelValue::Text("cancelled") });
    assert!(descriptor.named.synced_id && descriptor.named.synced_created_at && descriptor.named.strategy);
    assert!(!descriptor.named.synced_updated_at);
}
