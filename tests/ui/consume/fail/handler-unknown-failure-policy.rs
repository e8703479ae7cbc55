#[dionysus::consume(topic = "v3_rentals", event = "rental_updated", checkpoint, on_failure = "retry")]
async fn notify(_ctx: &mut dionysus::Context<'_>) -> dionysus::Result<()> {
    Ok(())
}

fn main() {}
