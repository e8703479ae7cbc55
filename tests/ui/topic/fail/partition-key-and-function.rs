use dionysus::registry::model::Record;

fn key_of(record: &dyn Record) -> Option<String> {
    Some(record.id())
}

#[dionysus::topic(name = "rentals", partition_key = "account_id", partition_key_with = key_of)]
pub struct Rentals;

fn main() {}
