use diesel::prelude::*;
use serde::Serialize;

diesel::table! { rentals (id) { id -> BigInt, account_id -> Text } }

#[dionysus::topic(namespace = "v3", name = "rentals", partition_key = "account_id")]
pub struct Rentals;

#[derive(Queryable, Selectable, Identifiable, Serialize, dionysus::Publishable)]
#[diesel(table_name = rentals)]
#[publish(topic = Rentals)]
pub struct Rental {
    pub id: i64,
    pub account_id: String,
}

fn main() {}
