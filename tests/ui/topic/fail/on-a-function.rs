#[dionysus::topic(name = "rentals")]
fn rentals() {}

fn main() {}
