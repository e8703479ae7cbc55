#[derive(serde::Deserialize)]
struct Rental {
    synced_id: i64,
}

#[dionysus::consume(topic = "v3_rentals", event = "rental_updated")]
async fn notify(rental: Rental) -> dionysus::Result<()> {
    let _ = rental.synced_id;
    Ok(())
}

fn main() {}
