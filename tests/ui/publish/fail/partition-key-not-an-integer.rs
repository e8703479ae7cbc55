use diesel::prelude::*;
use serde::Serialize;

diesel::table! { rentals (id) { id -> BigInt, code -> Text } }

#[derive(Queryable, Selectable, Identifiable, Serialize, dionysus::Publishable)]
#[diesel(table_name = rentals)]
#[publish(topic = "v3_rentals", partition_key = code)]
pub struct Rental {
    pub id: i64,
    pub code: String,
}

fn main() {}
