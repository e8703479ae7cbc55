#[dionysus::topic(name = "rentals", partitions = 3, partitions = 6)]
pub struct Rentals;

fn main() {}
