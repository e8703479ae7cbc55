#[dionysus::consume(topic = "v3_rentals", evnt = "rental_updated")]
async fn notify(_event: &dionysus::consumer::ConsumedEvent) -> dionysus::Result<()> {
    Ok(())
}

fn main() {}
