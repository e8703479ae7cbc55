#[dionysus::topic(name = rentals)]
pub struct Rentals;

fn main() {}
