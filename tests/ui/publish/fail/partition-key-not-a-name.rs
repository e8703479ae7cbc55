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

#[derive(Queryable, Selectable, Identifiable, Serialize, dionysus::Publishable)]
#[diesel(table_name = rentals)]
#[publish(topic = "v3_rentals", partition_key = 5)]
pub struct Rental {
    pub id: i64,
    pub account_id: i64,
    pub name: String,
}

fn main() {}
