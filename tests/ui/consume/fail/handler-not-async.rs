#[dionysus::consume(topic = "v3_rentals", event = "rental_updated")]
fn notify(_event: &dionysus::consumer::ConsumedEvent) -> dionysus::Result<()> {
    Ok(())
}

fn main() {}
