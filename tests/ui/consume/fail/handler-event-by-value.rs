#[dionysus::consume(topic = "v3_rentals", event = "rental_updated")]
async fn notify(event: dionysus::consumer::ConsumedEvent) -> dionysus::Result<()> {
    let _ = event;
    Ok(())
}

fn main() {}
