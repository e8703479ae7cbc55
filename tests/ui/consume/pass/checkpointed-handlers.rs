use dionysus::checkpoint::Ack;
use dionysus::Context;

#[derive(serde::Deserialize)]
struct Rental {
    synced_id: i64,
}

#[dionysus::consume(topic = "v3_rentals", event = "rental_created", checkpoint)]
async fn acks(ctx: &mut Context<'_>, rental: Rental) -> dionysus::Result<()> {
    ctx.ack(rental.synced_id.to_string(), chrono::Utc::now());
    Ok(())
}

#[dionysus::consume(topic = "v3_rentals", event = "rental_updated", checkpoint, on_failure = "block")]
async fn returns_an_ack(_ctx: &mut Context<'_>, rental: Rental) -> Result<Ack, std::io::Error> {
    Ok(Ack::new(rental.synced_id.to_string(), chrono::Utc::now()).version("v1"))
}

#[dionysus::consume(topic = "v3_rentals", event = "rental_destroyed", checkpoint, on_failure = "dead_letter")]
async fn returns_it_from_the_context(ctx: &mut Context<'_>) -> anyhow::Result<Ack> {
    Ok(ctx.ack("1", chrono::Utc::now()))
}

fn main() {
    let declared: Vec<_> = dionysus::consumer::handlers().filter(|handler| handler.checkpoint).collect();
    assert_eq!(declared.len(), 3);
    assert!(declared.iter().all(|handler| handler.in_transaction));
    let policies: Vec<_> = declared.iter().filter_map(|handler| handler.on_failure).collect();
    assert_eq!(policies.len(), 2);
}
