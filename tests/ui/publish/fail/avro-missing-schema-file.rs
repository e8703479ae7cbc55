use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;

diesel::table! { rentals (id) { id -> BigInt, account_id -> BigInt, name -> Text, updated_at -> Timestamptz } }

#[derive(Queryable, Selectable, Identifiable, Serialize, dionysus::Publishable)]
#[diesel(table_name = rentals)]
#[publish(topic = "v3_rentals", schema = "com.example.Rentals")]
pub struct Rental {
    pub id: i64,
    pub account_id: i64,
    pub name: String,
    pub updated_at: DateTime<Utc>,
}

fn main() {}
