//! The consuming service: replica tables in a database of its own, kept in sync by a
//! `dionysus::consumer::Consumer` from the producer's topics. It shares no code or table with
//! the producer; what it knows about the other side is the topic names and the model names
//! on the wire.
//!
//! * `accounts` replicate `Account` from `demo_accounts`;
//! * `rentals` replicate `Rental` from `demo_rentals`, soft-deleted by `synced_canceled_at`,
//!   with the price under another name (`from = "daily_price_cents"`) and the ids of the
//!   sideloaded fees (`synced_bookings_fee_ids`);
//! * `bookings_fees` are filled from the fees sideloaded in rental messages; each is
//!   attached to its rental through `synced_rental_id` (a fee the rental no longer lists is
//!   detached: `synced_rental_id` becomes `NULL`);
//! * `bookings` replicate `Booking` from `demo_bookings`, an Avro topic (records framed with
//!   their schema's registry id); a destroyed booking's tombstone deletes it.

use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, NaiveDate, Utc};
use dionysus::consumer::ConsumedEvent;
use serde_json::Value;

use self::schema::{accounts, bookings, bookings_fees, rentals};

/// The replica tables.
mod schema {
    diesel::table! {
        accounts (synced_id) {
            synced_id -> BigInt,
            synced_created_at -> Nullable<Timestamptz>,
            synced_updated_at -> Nullable<Timestamptz>,
            synced_data -> Nullable<Jsonb>,
            name -> Nullable<Text>,
            default_check_in_time -> Nullable<Text>,
        }
    }

    diesel::table! {
        rentals (synced_id) {
            synced_id -> BigInt,
            synced_created_at -> Nullable<Timestamptz>,
            synced_updated_at -> Nullable<Timestamptz>,
            synced_canceled_at -> Nullable<Timestamptz>,
            synced_data -> Nullable<Jsonb>,
            account_id -> Nullable<BigInt>,
            name -> Nullable<Text>,
            daily_price -> Nullable<BigInt>,
            synced_bookings_fee_ids -> Nullable<Array<BigInt>>,
        }
    }

    diesel::table! {
        bookings_fees (synced_id) {
            synced_id -> BigInt,
            synced_created_at -> Nullable<Timestamptz>,
            synced_updated_at -> Nullable<Timestamptz>,
            synced_rental_id -> Nullable<BigInt>,
            name -> Nullable<Text>,
            amount_cents -> Nullable<BigInt>,
        }
    }

    diesel::table! {
        bookings (synced_id) {
            synced_id -> BigInt,
            synced_created_at -> Nullable<Timestamptz>,
            synced_updated_at -> Nullable<Timestamptz>,
            rental_id -> Nullable<BigInt>,
            start_on -> Nullable<Date>,
            nights -> Nullable<Integer>,
        }
    }
}

/// The replica tables (next to the framework's consumer offsets, applied by
/// `dionysus::migrate`). `synced_id` must be unique: the consumer upserts on it.
pub const SCHEMA: &str = "
    CREATE TABLE accounts (
        synced_id BIGINT PRIMARY KEY,
        synced_created_at TIMESTAMPTZ,
        synced_updated_at TIMESTAMPTZ,
        synced_data JSONB,
        name TEXT,
        default_check_in_time TEXT
    );
    CREATE TABLE rentals (
        synced_id BIGINT PRIMARY KEY,
        synced_created_at TIMESTAMPTZ,
        synced_updated_at TIMESTAMPTZ,
        synced_canceled_at TIMESTAMPTZ,
        synced_data JSONB,
        account_id BIGINT,
        name TEXT,
        daily_price BIGINT,
        synced_bookings_fee_ids BIGINT[]
    );
    CREATE TABLE bookings_fees (
        synced_id BIGINT PRIMARY KEY,
        synced_created_at TIMESTAMPTZ,
        synced_updated_at TIMESTAMPTZ,
        synced_rental_id BIGINT,
        name TEXT,
        amount_cents BIGINT
    );
    CREATE TABLE bookings (
        synced_id BIGINT PRIMARY KEY,
        synced_created_at TIMESTAMPTZ,
        synced_updated_at TIMESTAMPTZ,
        rental_id BIGINT,
        start_on DATE,
        nights INTEGER
    );
";

/// Replica of the producer's `Account`.
#[allow(dead_code, reason = "the consumer writes the table from the descriptor; nothing reads the struct")]
#[derive(Debug, dionysus::Consume)]
#[diesel(table_name = accounts)]
#[consume(topic = "demo_accounts", model = "Account")]
pub struct ReplicatedAccount {
    /// The producer's id.
    pub synced_id: i64,
    /// The producer's `created_at`.
    pub synced_created_at: Option<DateTime<Utc>>,
    /// The producer's `updated_at`: older updates are ignored.
    pub synced_updated_at: Option<DateTime<Utc>>,
    /// The whole payload.
    pub synced_data: Option<Value>,
    /// Name.
    pub name: Option<String>,
    /// Default check-in time.
    pub default_check_in_time: Option<String>,
}

/// Replica of the producer's `Rental`, soft-deleted like the source.
#[allow(dead_code, reason = "the consumer writes the table from the descriptor; nothing reads the struct")]
#[derive(Debug, dionysus::Consume)]
#[diesel(table_name = rentals)]
#[consume(topic = "demo_rentals", model = "Rental", soft_delete = "synced_canceled_at")]
pub struct ReplicatedRental {
    /// The producer's id.
    pub synced_id: i64,
    /// The producer's `created_at`.
    pub synced_created_at: Option<DateTime<Utc>>,
    /// The producer's `updated_at`: older updates are ignored.
    pub synced_updated_at: Option<DateTime<Utc>>,
    /// The producer's `canceled_at`.
    pub synced_canceled_at: Option<DateTime<Utc>>,
    /// The whole payload, fees included.
    pub synced_data: Option<Value>,
    /// Owning account.
    pub account_id: Option<i64>,
    /// Name.
    pub name: Option<String>,
    /// Price per night in cents, from the payload's `daily_price_cents`.
    #[consume(from = "daily_price_cents")]
    pub daily_price: Option<i64>,
    /// Ids of its fees, from the payload's links.
    pub synced_bookings_fee_ids: Option<Vec<i64>>,
}

/// Replica of the producer's `BookingsFee`, from the fees sideloaded in rental messages.
#[allow(dead_code, reason = "the consumer writes the table from the descriptor; nothing reads the struct")]
#[derive(Debug, dionysus::Consume)]
#[diesel(table_name = bookings_fees)]
#[consume(topic = "demo_rentals", model = "BookingsFee")]
pub struct ReplicatedBookingsFee {
    /// The producer's id.
    pub synced_id: i64,
    /// The producer's `created_at`.
    pub synced_created_at: Option<DateTime<Utc>>,
    /// The producer's `updated_at`: older updates are ignored.
    pub synced_updated_at: Option<DateTime<Utc>>,
    /// The rental listing this fee (set by the consumer from the rental's links).
    pub synced_rental_id: Option<i64>,
    /// Name.
    pub name: Option<String>,
    /// Amount in cents.
    pub amount_cents: Option<i64>,
}

/// Replica of the producer's `Booking`, read from the Avro topic `demo_bookings` with the
/// consumer's own copy of the schema (`schemas/demo/Booking.avsc`); a tombstone deletes it.
#[allow(dead_code, reason = "the consumer writes the table from the descriptor; nothing reads the struct")]
#[derive(Debug, dionysus::Consume)]
#[diesel(table_name = bookings)]
#[consume(topic = "demo_bookings", model = "Booking", schema = "demo.Booking")]
pub struct ReplicatedBooking {
    /// The producer's id.
    pub synced_id: i64,
    /// The producer's `created_at`.
    pub synced_created_at: Option<DateTime<Utc>>,
    /// The producer's `updated_at`: older updates are ignored.
    pub synced_updated_at: Option<DateTime<Utc>>,
    /// Booked rental.
    pub rental_id: Option<i64>,
    /// First night.
    pub start_on: Option<NaiveDate>,
    /// Number of nights.
    pub nights: Option<i32>,
}

/// `rental_updated` events the consumer applied (counted by the handler `count_rental_updates`).
pub static RENTAL_UPDATES: AtomicU64 = AtomicU64::new(0);

/// A handler: runs after each committed batch for every `rental_updated` event; the event
/// carries the records and the replica changes they made (`local_changes`).
#[dionysus::consume(topic = "demo_rentals", event = "rental_updated")]
async fn count_rental_updates(_event: &ConsumedEvent) -> dionysus::Result<()> {
    RENTAL_UPDATES.fetch_add(1, Ordering::Relaxed);
    Ok(())
}
