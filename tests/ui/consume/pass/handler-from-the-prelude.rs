// With `use dionysus::prelude::*`, `#[consume(...)]` is the handler attribute on a function
// and the derive's helper on a `#[derive(Consume)]` struct, in the same module.
use dionysus::prelude::*;

diesel::table! {
    replicated_rentals (synced_id) {
        synced_id -> BigInt,
        name -> Nullable<Text>,
    }
}

#[derive(Consume)]
#[diesel(table_name = replicated_rentals)]
#[consume(topic = "v3_rentals", model = "Rental")]
pub struct ReplicatedRental {
    pub synced_id: i64,
    #[consume(from = "title")]
    pub name: Option<String>,
}

#[consume(topic = "v3_rentals", event = "rental_updated")]
async fn on_update(event: &ConsumedEvent) -> dionysus::Result<()> {
    let _ = event.local_changes.len();
    Ok(())
}

fn main() {
    use dionysus::consumer::replica::Replica;
    assert_eq!(ReplicatedRental::DESCRIPTOR.model, "Rental");
    assert!(dionysus::consumer::handlers().any(|handler| handler.matches("v3_rentals", "rental_updated")));
}
