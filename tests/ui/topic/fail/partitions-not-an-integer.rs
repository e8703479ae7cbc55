#[dionysus::topic(name = "rentals", partitions = "12")]
pub struct Rentals;

fn main() {}
