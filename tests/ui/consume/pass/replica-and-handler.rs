// A replica model and a handler in one module: the derive's `#[consume(...)]` helper and
// the `#[dionysus::consume(...)]` attribute (used by path) do not clash, even with the
// prelude imported.
use chrono::{DateTime, Utc};
use dionysus::prelude::*;

diesel::table! {
    replicated_rentals (synced_id) {
        synced_id -> BigInt,
        synced_created_at -> Nullable<Timestamptz>,
        synced_updated_at -> Nullable<Timestamptz>,
        synced_canceled_at -> Nullable<Timestamptz>,
        name -> Text,
        price -> Nullable<Double>,
        tags -> Nullable<Array<Text>>,
        synced_data -> Nullable<Jsonb>,
        note -> Nullable<Text>,
    }
}

#[derive(Consume)]
#[diesel(table_name = replicated_rentals)]
#[consume(topic = "v3_rentals", model = "Rental", soft_delete = "synced_canceled_at", strategy = "cancel")]
pub struct ReplicatedRental {
    pub synced_id: i64,
    pub synced_created_at: Option<DateTime<Utc>>,
    pub synced_updated_at: Option<DateTime<Utc>>,
    pub synced_canceled_at: Option<DateTime<Utc>>,
    pub name: String,
    #[consume(from = "daily_price")]
    pub price: Option<f64>,
    pub tags: Option<Vec<String>>,
    pub synced_data: Option<serde_json::Value>,
    #[consume(skip)]
    pub note: Option<String>,
}

#[dionysus::consume(topic = "v3_rentals", event = "rental_updated")]
async fn notify(event: &ConsumedEvent) -> dionysus::Result<()> {
    let _ = event.local_changes.len();
    Ok(())
}

fn main() {
    use dionysus::consumer::replica::Replica;
    let descriptor = ReplicatedRental::DESCRIPTOR;
    assert_eq!(descriptor.model, "Rental");
    assert_eq!(descriptor.column("price").map(|c| c.source), Some("daily_price"));
    assert!(descriptor.column("note").is_none());
    assert_eq!(descriptor.soft_delete, Some("synced_canceled_at"));
    assert_eq!(descriptor.synced_data, Some("synced_data"));
    assert!(dionysus::consumer::handlers().any(|h| h.matches("v3_rentals", "rental_updated")));
    let _ = notify;
}
