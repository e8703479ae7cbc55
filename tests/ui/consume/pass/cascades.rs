use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;

diesel::table! { rentals (id) { id -> BigInt, name -> Text } }
diesel::table! { bookings (id) { id -> BigInt, rental_id -> BigInt } }
diesel::table! { accounts (id) { id -> BigInt, name -> Text } }
diesel::table! { synced_rentals (synced_id) { synced_id -> BigInt, synced_updated_at -> Nullable<Timestamptz> } }
diesel::allow_tables_to_appear_in_same_query!(rentals, bookings, accounts);

#[derive(Queryable, Selectable, Identifiable, Serialize, dionysus::Publishable)]
#[diesel(table_name = rentals)]
pub struct Rental {
    pub id: i64,
    pub name: String,
}

#[derive(Queryable, Selectable, Identifiable, Associations, Serialize, dionysus::Publishable)]
#[diesel(table_name = bookings, belongs_to(Rental))]
#[publish(topic = "v3_bookings", partition_key = "rental_id")]
pub struct Booking {
    pub id: i64,
    pub rental_id: i64,
}

#[derive(Queryable, Selectable, Identifiable, Serialize, dionysus::Publishable)]
#[diesel(table_name = accounts)]
#[publish(topic = "v3_accounts", partition_key = "id")]
pub struct Account {
    pub id: i64,
    pub name: String,
}

#[derive(dionysus::Consume)]
#[diesel(table_name = synced_rentals)]
#[consume(topic = "v3_rentals", model = "Rental", cascade(Rental -> Booking), cascade(crate::Booking -> Rental))]
pub struct SyncedRental {
    pub synced_id: i64,
    pub synced_updated_at: Option<DateTime<Utc>>,
}

#[dionysus::consume(
    topic = "v3_payments",
    event = "payment_made",
    cascade(Rental -> Booking, from = "rental_id"),
    cascade(Rental -> Booking)
)]
async fn payment_made(_ctx: &mut dionysus::Context<'_>) -> dionysus::Result<()> {
    Ok(())
}

fn main() {}
