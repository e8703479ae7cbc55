#[dionysus::topic(name = "rentals")]
pub struct Rentals {
    pub id: i64,
}

fn main() {}
