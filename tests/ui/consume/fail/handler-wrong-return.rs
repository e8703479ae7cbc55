#[dionysus::consume(topic = "v3_rentals", event = "rental_updated")]
async fn notify(ctx: &mut dionysus::Context<'_>) -> Option<()> {
    let _ = ctx.offset();
    Some(())
}

fn main() {}
