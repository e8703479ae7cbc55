#[dionysus::topic(name = "rentals", tombstone = "empty")]
pub struct Rentals;

fn main() {}
