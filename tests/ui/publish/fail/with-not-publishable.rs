use diesel::prelude::*;
use serde::Serialize;

diesel::table! { accounts (id) { id -> BigInt, default_check_in_time -> Nullable<Text> } }
diesel::table! { rentals (id) { id -> BigInt, account_id -> BigInt, name -> Text } }
diesel::allow_tables_to_appear_in_same_query!(accounts, rentals);

#[derive(Queryable, Selectable, Identifiable, Serialize, dionysus::Publishable)]
#[diesel(table_name = accounts)]
pub struct Account {
    pub id: i64,
    pub default_check_in_time: Option<String>,
}

diesel::table! { fees (id) { id -> BigInt, rental_id -> BigInt } }

// A diesel model related to Rental, but not publishable.
#[derive(Queryable, Selectable, Identifiable, Associations, Serialize)]
#[diesel(table_name = fees, belongs_to(Rental))]
pub struct Plain {
    pub id: i64,
    pub rental_id: i64,
}

#[derive(Queryable, Selectable, Identifiable, Serialize, dionysus::Publishable)]
#[diesel(table_name = rentals)]
#[publish(topic = "v3_rentals", with(Plain))]
pub struct Rental {
    pub id: i64,
    pub account_id: i64,
    pub name: String,
}

fn main() {}
