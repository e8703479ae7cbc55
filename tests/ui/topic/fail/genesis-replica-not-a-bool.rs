#[dionysus::topic(name = "rentals", genesis_replica = "yes")]
pub struct Rentals;

fn main() {}
