// A mistake in `#[publish(...)]` is one error: the model still implements `Publishable` (a
// stub), so writing its changes and naming it in `with(...)` add nothing to it.
use diesel::prelude::*;
use diesel_async::AsyncPgConnection;
use serde::Serialize;

diesel::table! { rentals (id) { id -> BigInt, account_id -> BigInt } }
diesel::table! { bookings (id) { id -> BigInt, rental_id -> BigInt } }
diesel::allow_tables_to_appear_in_same_query!(rentals, bookings);

#[derive(Queryable, Selectable, Identifiable, Serialize, dionysus::Publishable)]
#[diesel(table_name = rentals)]
#[publish(topic = "v3_rentals", partition_key = "acount_id")]
pub struct Rental {
    pub id: i64,
    pub account_id: i64,
}

#[derive(Queryable, Selectable, Identifiable, Associations, Serialize, dionysus::Publishable)]
#[diesel(table_name = bookings, belongs_to(Rental))]
#[publish(topic = "v3_bookings", with(Rental))]
pub struct Booking {
    pub id: i64,
    pub rental_id: i64,
}

async fn create(conn: &mut AsyncPgConnection, rental: &Rental) -> dionysus::Result<()> {
    dionysus::outbox::created(conn, rental).await?;
    Ok(())
}

fn main() {
    let _ = create;
}
