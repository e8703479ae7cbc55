// Every mistake is reported in one compilation.
#[dionysus::topic(name = "rentals", partitions = -1, colour = "red", genesis_replica = 1)]
pub struct Rentals;

fn main() {}
