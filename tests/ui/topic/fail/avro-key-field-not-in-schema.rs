#[dionysus::topic(name = "rentals", format = "avro", schema = "com.example.Rental", key(field = rental_id))]
pub struct Rentals;

fn main() {}
