#[dionysus::topic(namespace = "v3", name = "rentals", partiton_key = "account_id")]
pub struct Rentals;

fn main() {}
