use diesel::prelude::*;
use serde::Serialize;

diesel::table! { rentals (id) { id -> BigInt, code -> Text } }

#[derive(Queryable, Selectable, Identifiable, Serialize, dionysus::Publishable)]
#[diesel(table_name = rentals)]
#[publish(topic = "v3_rentals", partition_key_with = code_of, partition_key_to_i)]
pub struct Rental {
    pub id: i64,
    pub code: String,
}

fn code_of(rental: &Rental) -> Option<String> {
    Some(rental.code.clone())
}

fn main() {}
