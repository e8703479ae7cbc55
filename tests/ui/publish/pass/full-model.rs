use diesel::prelude::*;
use dionysus::serialize::{SerializeError, Serializer, Sideloads};
use serde::Serialize;

diesel::table! { accounts (id) { id -> BigInt, default_check_in_time -> Nullable<Text> } }
diesel::table! { rentals (id) { id -> BigInt, account_id -> BigInt, name -> Text, canceled_at -> Nullable<Timestamptz> } }
diesel::table! { bookings_fees (id) { id -> BigInt, rental_id -> BigInt, amount -> BigInt } }
diesel::allow_tables_to_appear_in_same_query!(accounts, rentals, bookings_fees);

#[dionysus::topic(namespace = "v3", name = "rentals", partition_key = "account_id")]
pub struct Rentals;

#[derive(Queryable, Selectable, Identifiable, Serialize, dionysus::Publishable)]
#[diesel(table_name = accounts)]
pub struct Account {
    pub id: i64,
    pub default_check_in_time: Option<String>,
}

#[derive(Queryable, Selectable, Identifiable, Associations, Serialize, dionysus::Publishable)]
#[diesel(table_name = rentals, belongs_to(Account))]
#[publish(topic = "v3_rentals", partition_key = "account_id", with(BookingsFee),
          observe(Account, columns(default_check_in_time), via = "account_id"))]
#[publish(topic = Rentals2, partition_key_with = rental_partition_key, serializer = NameOnly, observe(Account, columns(default_check_in_time)))]
pub struct Rental {
    pub id: i64,
    pub account_id: i64,
    pub name: String,
    pub canceled_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[dionysus::topic(namespace = "v3", name = "rentals_by_name")]
pub struct Rentals2;

fn rental_partition_key(rental: &Rental) -> Option<String> {
    Some(rental.name.clone())
}

#[derive(Default)]
pub struct NameOnly;

impl Serializer<Rental> for NameOnly {
    fn serialize(&self, rental: &Rental, _: &Sideloads) -> Result<serde_json::Value, SerializeError> {
        Ok(serde_json::json!({ "name": rental.name }))
    }
}

#[derive(Queryable, Selectable, Identifiable, Associations, Serialize, dionysus::Publishable)]
#[diesel(table_name = bookings_fees, belongs_to(Rental))]
#[publishable(model_name = "Bookings::Fee", soft_delete = false)]
pub struct BookingsFee {
    pub id: i64,
    pub rental_id: i64,
    pub amount: i64,
}

fn main() {
    use dionysus::Publishable;
    assert_eq!(Rental::PUBLICATIONS.len(), 2);
    assert_eq!(BookingsFee::MODEL.model_name, "Bookings::Fee");
    let registry = dionysus::Registry::global();
    registry.validate().unwrap();
    assert_eq!(registry.publications_of("Rental").count(), 2);
}
