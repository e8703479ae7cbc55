#[dionysus::consume(topic = "v3_rentals", event = "rental_updated", on_failure = "record")]
async fn notify(_ctx: &mut dionysus::Context<'_>) -> dionysus::Result<()> {
    Ok(())
}

fn main() {}
