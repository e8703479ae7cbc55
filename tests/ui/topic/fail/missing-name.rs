#[dionysus::topic(namespace = "v3", partition_key = "account_id")]
pub struct Rentals;

fn main() {}
