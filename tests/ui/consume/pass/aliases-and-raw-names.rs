// Column kinds come from the field types through a trait, so aliases work; a raw identifier
// is the column without `r#`.
use chrono::{DateTime, Utc};

diesel::table! {
    rentals (synced_id) {
        synced_id -> BigInt,
        synced_updated_at -> Nullable<Timestamptz>,
        price -> Nullable<Double>,
        r#type -> Text,
        tags -> Nullable<Array<Nullable<Text>>>,
    }
}

type Price = Option<f64>;
type Timestamp = DateTime<Utc>;

#[derive(dionysus::Consume)]
#[diesel(table_name = rentals)]
#[consume(topic = "v3_rentals", model = "Rental")]
pub struct Rental {
    pub synced_id: i64,
    pub synced_updated_at: Option<Timestamp>,
    pub price: Price,
    pub r#type: String,
    pub tags: Option<Vec<Option<String>>>,
}

fn main() {
    use dionysus::consumer::replica::{ColumnKind, Replica};
    let column = |name: &str| Rental::DESCRIPTOR.column(name).map(|column| (column.kind, column.nullable));
    assert_eq!(column("price"), Some((ColumnKind::Float, true)));
    assert_eq!(column("synced_updated_at"), Some((ColumnKind::Timestamp, true)));
    assert_eq!(column("type"), Some((ColumnKind::Text, false)));
    assert_eq!(column("tags"), Some((ColumnKind::Array, true)));
}
