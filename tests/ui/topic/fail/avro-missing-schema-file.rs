#[dionysus::topic(name = "rentals", format = "avro", schema = "com.example.Rentel")]
pub struct Rentals;

fn main() {}
