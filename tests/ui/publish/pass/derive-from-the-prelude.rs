// `use dionysus::prelude::*` is enough to derive `Publishable` and declare a topic.
use diesel::prelude::*;
use dionysus::prelude::*;

diesel::table! {
    rentals (id) {
        id -> BigInt,
        account_id -> BigInt,
    }
}

#[topic(name = "prelude_rentals", partition_key = "account_id")]
pub struct PreludeRentals;

#[derive(Queryable, Selectable, Identifiable, serde::Serialize, Publishable)]
#[diesel(table_name = rentals)]
#[publish(topic = PreludeRentals)]
pub struct Rental {
    pub id: i64,
    pub account_id: i64,
}

fn main() {
    fn publishable<T: Publishable>() {}
    publishable::<Rental>();
    assert_eq!(PreludeRentals::NAME, "prelude_rentals");
}
