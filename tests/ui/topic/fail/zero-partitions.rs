#[dionysus::topic(name = "rentals", partitions = 0)]
pub struct Rentals;

fn main() {}
