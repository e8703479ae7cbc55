diesel::table! {
    rentals (synced_id) {
        synced_id -> BigInt,
        name -> Text,
        daily_price -> Double,
    }
}

#[derive(dionysus::Consume)]
#[diesel(table_name = rentals)]
#[consume(topic = "v3_rentals", model = "Rental", schema = "com.example.Rental")]
pub struct Rental {
    pub synced_id: i64,
    pub name: String,
    pub daily_price: f64,
}

fn main() {}
