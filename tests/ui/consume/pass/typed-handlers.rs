// Every accepted handler shape, after commit and inside the batch's transaction, with the
// error types a handler may return.
use dionysus::prelude::*;

#[derive(serde::Deserialize)]
pub struct Rental {
    pub synced_id: i64,
    pub name: Option<String>,
}

#[derive(Debug)]
pub struct Refused;

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("refused")
    }
}

impl std::error::Error for Refused {}

#[dionysus::consume(topic = "v3_rentals", event = "rental_created")]
async fn one(ctx: &mut Context<'_>, rental: Rental) -> Result<(), Refused> {
    let _ = (ctx.topic(), ctx.partition(), ctx.offset(), ctx.key(), ctx.event_name(), rental.name);
    Ok(())
}

#[dionysus::consume(topic = "v3_rentals", event = "rental_updated", in_transaction)]
async fn all(ctx: &mut dionysus::Context<'_>, rentals: Vec<Rental>) -> dionysus::Result<()> {
    use diesel_async::SimpleAsyncConnection;
    if rentals.iter().any(|rental| rental.synced_id < 0) {
        return Err(dionysus::Error::App(Box::new(Refused)));
    }
    ctx.conn().batch_execute("SELECT 1").await?;
    Ok(())
}

#[dionysus::consume(topic = "v3_rentals", event = "*")]
async fn any(ctx: &mut Context<'_>) -> anyhow::Result<()> {
    let _ = (ctx.records().len(), ctx.local_changes().len(), ctx.envelope());
    Ok(())
}

#[dionysus::consume(topic = "v3_rentals", event = "rental_destroyed", in_transaction = false)]
async fn untyped(event: &ConsumedEvent) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let _ = event.transformed_data.len();
    Ok(())
}

fn main() {
    let declared: Vec<_> = dionysus::consumer::handlers().filter(|h| h.topic == "v3_rentals").collect();
    assert_eq!(declared.len(), 4);
    assert!(declared.iter().any(|h| h.in_transaction && h.event == "rental_updated"));
}
