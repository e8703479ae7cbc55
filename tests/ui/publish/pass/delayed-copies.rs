// Delayed copies: one delay, a chain, and the spellings of a delay; the registry names the
// delay topics canonically.
use diesel::prelude::*;
use serde::Serialize;

diesel::table! { rentals (id) { id -> BigInt, account_id -> BigInt } }

#[derive(Queryable, Selectable, Identifiable, Serialize, dionysus::Publishable)]
#[diesel(table_name = rentals)]
#[publish(topic = "v3_rentals", partition_key = "account_id", delayed = "5m")]
#[publish(topic = "v3_rentals_audit", partition_key = "account_id", delayed = ["60s", "1h30m", "2d"])]
pub struct Rental {
    pub id: i64,
    pub account_id: i64,
}

fn main() {
    let registry = dionysus::Registry::default().with_model::<Rental>();
    let names: Vec<String> = registry.delay_topics().into_iter().map(|topic| topic.name).collect();
    assert_eq!(
        names,
        ["v3_rentals_audit_delay_1m", "v3_rentals_audit_delay_2d", "v3_rentals_audit_delay_90m", "v3_rentals_delay_5m"]
    );
}
