use diesel::prelude::*;
use serde::Serialize;

diesel::table! { rentals (id) { id -> BigInt, account_id -> BigInt } }

#[derive(Queryable, Selectable, Identifiable, Serialize, dionysus::Publishable)]
#[diesel(table_name = rentals)]
#[publish(topic = "v3_rentals", partition_key = "account_id", delayed = 300)]
pub struct Rental {
    pub id: i64,
    pub account_id: i64,
}

fn main() {}
