#[dionysus::topic(namespace = "v3", name = "rentals/eu")]
pub struct Rentals;

fn main() {}
