struct Rental {
    synced_id: i64,
}

#[dionysus::consume(topic = "v3_rentals", event = "rental_updated")]
async fn notify(_ctx: &mut dionysus::Context<'_>, rental: Rental) -> dionysus::Result<()> {
    let _ = rental.synced_id;
    Ok(())
}

fn main() {}
