//! The producing service: accounts, rentals, bookings and bookings fees in its own database.
//! Every change writes its outbox rows in the change's own transaction; the relay publishes
//! them. What is declared here decides what is published:
//!
//! * `Account` on `demo_accounts`;
//! * `Rental` on `demo_rentals`, soft-deleted through `canceled_at`, with its fees sideloaded
//!   (`with(BookingsFee)`: a fee change republishes its rental) and observing its account's
//!   `default_check_in_time` (a change of that column republishes the account's rentals);
//! * `Booking` on `demo_bookings`, an Avro topic (`demo.Booking` records);
//! * `BookingsFee` is published only inside its rental's messages.

use chrono::{DateTime, NaiveDate, Utc};
use diesel::prelude::*;
use diesel_async::methods::LoadQuery;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use dionysus::Publishable;
use serde::Serialize;

use self::schema::{accounts, bookings, bookings_fees, rentals};

/// `demo_accounts`, partitioned by the account id.
#[dionysus::topic(namespace = "demo", name = "accounts", partition_key = "id", partitions = 2)]
pub struct Accounts;

/// `demo_rentals`, partitioned by the account id, so an account's rentals stay in order.
#[dionysus::topic(namespace = "demo", name = "rentals", partition_key = "account_id", partitions = 3)]
pub struct Rentals;

/// `demo_bookings`, partitioned by the account id: an Avro topic, one `demo.Booking` record
/// per message (`schemas/demo/Booking.avsc`), keyed by the booking's id; a destroyed booking
/// is a tombstone.
#[dionysus::topic(
    namespace = "demo",
    name = "bookings",
    partition_key = "account_id",
    partitions = 3,
    format = "avro",
    schema = "demo.Booking"
)]
pub struct Bookings;

/// The producer's tables.
mod schema {
    diesel::table! {
        accounts (id) {
            id -> BigInt,
            name -> Text,
            default_check_in_time -> Nullable<Text>,
            created_at -> Timestamptz,
            updated_at -> Timestamptz,
        }
    }

    diesel::table! {
        rentals (id) {
            id -> BigInt,
            account_id -> BigInt,
            name -> Text,
            daily_price_cents -> BigInt,
            canceled_at -> Nullable<Timestamptz>,
            created_at -> Timestamptz,
            updated_at -> Timestamptz,
        }
    }

    diesel::table! {
        bookings (id) {
            id -> BigInt,
            account_id -> BigInt,
            rental_id -> BigInt,
            start_on -> Date,
            nights -> Integer,
            created_at -> Timestamptz,
            updated_at -> Timestamptz,
        }
    }

    diesel::table! {
        bookings_fees (id) {
            id -> BigInt,
            rental_id -> BigInt,
            name -> Text,
            amount_cents -> BigInt,
            created_at -> Timestamptz,
            updated_at -> Timestamptz,
        }
    }

    diesel::joinable!(rentals -> accounts (account_id));
    diesel::joinable!(bookings -> rentals (rental_id));
    diesel::joinable!(bookings_fees -> rentals (rental_id));
    diesel::allow_tables_to_appear_in_same_query!(accounts, rentals, bookings, bookings_fees);
}

/// The producer's own tables (next to the framework's, applied by `dionysus::migrate`).
pub const SCHEMA: &str = "
    CREATE TABLE accounts (
        id BIGSERIAL PRIMARY KEY,
        name TEXT NOT NULL,
        default_check_in_time TEXT,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    CREATE TABLE rentals (
        id BIGSERIAL PRIMARY KEY,
        account_id BIGINT NOT NULL REFERENCES accounts,
        name TEXT NOT NULL,
        daily_price_cents BIGINT NOT NULL,
        canceled_at TIMESTAMPTZ,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    CREATE TABLE bookings (
        id BIGSERIAL PRIMARY KEY,
        account_id BIGINT NOT NULL REFERENCES accounts,
        rental_id BIGINT NOT NULL REFERENCES rentals,
        start_on DATE NOT NULL,
        nights INTEGER NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    CREATE TABLE bookings_fees (
        id BIGSERIAL PRIMARY KEY,
        rental_id BIGINT NOT NULL REFERENCES rentals,
        name TEXT NOT NULL,
        amount_cents BIGINT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
";

/// Records that existed before the service published anything: written with plain SQL, so
/// they have no outbox rows, and only a genesis brings them to the consumers.
pub const LEGACY_RENTALS: i64 = 300;

/// The SQL writing the legacy records: one account, [`LEGACY_RENTALS`] rentals with a
/// cleaning fee each, and two bookings per rental.
pub fn legacy_sql() -> String {
    format!(
        "INSERT INTO accounts (name, default_check_in_time) VALUES ('Legacy Stays', '14:00');
         INSERT INTO rentals (account_id, name, daily_price_cents)
             SELECT currval('accounts_id_seq'), 'Legacy villa ' || i, 9000 + i FROM generate_series(1, {LEGACY_RENTALS}) i;
         INSERT INTO bookings_fees (rental_id, name, amount_cents) SELECT id, 'Cleaning', 3500 FROM rentals;
         INSERT INTO bookings (account_id, rental_id, start_on, nights)
             SELECT account_id, id, DATE '2026-07-01' + (id % 60)::int, 2 + n FROM rentals, generate_series(1, 2) n;"
    )
}

/// A customer account.
#[derive(Debug, Clone, Queryable, Selectable, Identifiable, Serialize, dionysus::Publishable)]
#[diesel(table_name = accounts)]
#[publish(topic = Accounts, partition_key = "id")]
pub struct Account {
    /// Id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Check-in time of its rentals unless they say otherwise, e.g. `15:00`.
    pub default_check_in_time: Option<String>,
    /// Created at.
    pub created_at: DateTime<Utc>,
    /// Updated at.
    pub updated_at: DateTime<Utc>,
}

/// A rental (a holiday home) of an account.
#[derive(Debug, Clone, Queryable, Selectable, Identifiable, Associations, Serialize, dionysus::Publishable)]
#[diesel(table_name = rentals, belongs_to(Account))]
#[publish(
    topic = Rentals,
    partition_key = "account_id",
    with(BookingsFee),
    observe(Account, columns(default_check_in_time))
)]
pub struct Rental {
    /// Id.
    pub id: i64,
    /// Owning account.
    pub account_id: i64,
    /// Name.
    pub name: String,
    /// Price per night, in cents.
    pub daily_price_cents: i64,
    /// Set when the rental is soft-deleted (published as `rental_destroyed`).
    pub canceled_at: Option<DateTime<Utc>>,
    /// Created at.
    pub created_at: DateTime<Utc>,
    /// Updated at.
    pub updated_at: DateTime<Utc>,
}

/// A booking of a rental.
#[derive(Debug, Clone, Queryable, Selectable, Identifiable, Associations, Serialize, dionysus::Publishable)]
#[diesel(table_name = bookings, belongs_to(Rental))]
#[publish(topic = Bookings, partition_key = "account_id", schema = "demo.Booking")]
pub struct Booking {
    /// Id.
    pub id: i64,
    /// Account of the rental.
    pub account_id: i64,
    /// Booked rental.
    pub rental_id: i64,
    /// First night.
    pub start_on: NaiveDate,
    /// Number of nights.
    pub nights: i32,
    /// Created at.
    pub created_at: DateTime<Utc>,
    /// Updated at.
    pub updated_at: DateTime<Utc>,
}

/// A fee charged with every booking of a rental; published inside the rental's messages.
#[derive(Debug, Clone, Queryable, Selectable, Identifiable, Associations, Serialize, dionysus::Publishable)]
#[diesel(table_name = bookings_fees, belongs_to(Rental))]
pub struct BookingsFee {
    /// Id.
    pub id: i64,
    /// Rental it belongs to.
    pub rental_id: i64,
    /// Name, e.g. `Cleaning`.
    pub name: String,
    /// Amount, in cents.
    pub amount_cents: i64,
    /// Created at.
    pub created_at: DateTime<Utc>,
    /// Updated at.
    pub updated_at: DateTime<Utc>,
}

/// Runs `insert` (an `INSERT … RETURNING` of a whole record) and writes the record's outbox
/// rows in the same transaction; returns the record.
pub async fn create<T, Q>(conn: &mut AsyncPgConnection, insert: Q) -> dionysus::Result<T>
where
    T: Publishable + Send + 'static,
    Q: LoadQuery<'static, AsyncPgConnection, T> + Send + 'static,
{
    conn.transaction::<_, dionysus::Error, _>(async move |tx| {
        let record = diesel_async::RunQueryDsl::get_result(insert, tx).await?;
        dionysus::outbox::created(tx, &record).await?;
        Ok(record)
    })
    .await
}

/// Reads a record with `before`, runs `update` (an `UPDATE … RETURNING` of it) and writes
/// the outbox rows for what changed, in one transaction; returns the record as updated.
pub async fn update<T, B, Q>(conn: &mut AsyncPgConnection, before: B, update: Q) -> dionysus::Result<T>
where
    T: Publishable + Send + 'static,
    B: LoadQuery<'static, AsyncPgConnection, T> + Send + 'static,
    Q: LoadQuery<'static, AsyncPgConnection, T> + Send + 'static,
{
    conn.transaction::<_, dionysus::Error, _>(async move |tx| {
        let before = diesel_async::RunQueryDsl::get_result(before, tx).await?;
        let after = diesel_async::RunQueryDsl::get_result(update, tx).await?;
        dionysus::outbox::updated_from(tx, &before, &after).await?;
        Ok(after)
    })
    .await
}

/// Runs `delete` (a `DELETE … RETURNING` of one record) and writes the outbox rows of the
/// destroyed record in the same transaction; returns the record as it was.
pub async fn destroy<T, Q>(conn: &mut AsyncPgConnection, delete: Q) -> dionysus::Result<T>
where
    T: Publishable + Send + 'static,
    Q: LoadQuery<'static, AsyncPgConnection, T> + Send + 'static,
{
    conn.transaction::<_, dionysus::Error, _>(async move |tx| {
        let record = diesel_async::RunQueryDsl::get_result(delete, tx).await?;
        dionysus::outbox::destroyed(tx, &record).await?;
        Ok(record)
    })
    .await
}

/// Creates an account.
pub async fn create_account(conn: &mut AsyncPgConnection, name: &str, check_in: &str) -> dionysus::Result<Account> {
    let values = (accounts::name.eq(name.to_owned()), accounts::default_check_in_time.eq(check_in.to_owned()));
    create(conn, diesel::insert_into(accounts::table).values(values).returning(Account::as_returning())).await
}

/// Creates a rental of `account`.
pub async fn create_rental(
    conn: &mut AsyncPgConnection,
    account: &Account,
    name: &str,
    daily_price_cents: i64,
) -> dionysus::Result<Rental> {
    let values = (
        rentals::account_id.eq(account.id),
        rentals::name.eq(name.to_owned()),
        rentals::daily_price_cents.eq(daily_price_cents),
    );
    create(conn, diesel::insert_into(rentals::table).values(values).returning(Rental::as_returning())).await
}

/// Adds a fee to `rental` (republishes the rental).
pub async fn create_fee(
    conn: &mut AsyncPgConnection,
    rental: &Rental,
    name: &str,
    amount_cents: i64,
) -> dionysus::Result<BookingsFee> {
    let values = (
        bookings_fees::rental_id.eq(rental.id),
        bookings_fees::name.eq(name.to_owned()),
        bookings_fees::amount_cents.eq(amount_cents),
    );
    create(conn, diesel::insert_into(bookings_fees::table).values(values).returning(BookingsFee::as_returning())).await
}

/// Books `rental` for `nights` from `start_on`.
pub async fn create_booking(
    conn: &mut AsyncPgConnection,
    rental: &Rental,
    start_on: NaiveDate,
    nights: i32,
) -> dionysus::Result<Booking> {
    let values = (
        bookings::account_id.eq(rental.account_id),
        bookings::rental_id.eq(rental.id),
        bookings::start_on.eq(start_on),
        bookings::nights.eq(nights),
    );
    create(conn, diesel::insert_into(bookings::table).values(values).returning(Booking::as_returning())).await
}

/// Renames a rental.
pub async fn rename_rental(conn: &mut AsyncPgConnection, id: i64, name: &str) -> dionysus::Result<Rental> {
    let change = (rentals::name.eq(name.to_owned()), rentals::updated_at.eq(Utc::now()));
    let before = rentals::table.find(id).select(Rental::as_select());
    update(conn, before, diesel::update(rentals::table.find(id)).set(change).returning(Rental::as_returning())).await
}

/// Soft-deletes a rental: published as `rental_destroyed`, kept in both databases.
pub async fn cancel_rental(conn: &mut AsyncPgConnection, id: i64) -> dionysus::Result<Rental> {
    let now = Utc::now();
    let change = (rentals::canceled_at.eq(Some(now)), rentals::updated_at.eq(now));
    let before = rentals::table.find(id).select(Rental::as_select());
    update(conn, before, diesel::update(rentals::table.find(id)).set(change).returning(Rental::as_returning())).await
}

/// Restores a soft-deleted rental: published as `rental_created`.
pub async fn restore_rental(conn: &mut AsyncPgConnection, id: i64) -> dionysus::Result<Rental> {
    let change = (rentals::canceled_at.eq(None::<DateTime<Utc>>), rentals::updated_at.eq(Utc::now()));
    let before = rentals::table.find(id).select(Rental::as_select());
    update(conn, before, diesel::update(rentals::table.find(id)).set(change).returning(Rental::as_returning())).await
}

/// Deletes a rental that has no fees or bookings (published as `rental_destroyed`).
pub async fn destroy_rental(conn: &mut AsyncPgConnection, id: i64) -> dionysus::Result<Rental> {
    destroy(conn, diesel::delete(rentals::table.find(id)).returning(Rental::as_returning())).await
}

/// Changes the length of a booking.
pub async fn change_nights(conn: &mut AsyncPgConnection, id: i64, nights: i32) -> dionysus::Result<Booking> {
    let change = (bookings::nights.eq(nights), bookings::updated_at.eq(Utc::now()));
    let before = bookings::table.find(id).select(Booking::as_select());
    update(conn, before, diesel::update(bookings::table.find(id)).set(change).returning(Booking::as_returning())).await
}

/// Changes a fee's amount (republishes its rental: `with(BookingsFee)`).
pub async fn change_fee(conn: &mut AsyncPgConnection, id: i64, amount_cents: i64) -> dionysus::Result<BookingsFee> {
    let change = (bookings_fees::amount_cents.eq(amount_cents), bookings_fees::updated_at.eq(Utc::now()));
    let before = bookings_fees::table.find(id).select(BookingsFee::as_select());
    let query = diesel::update(bookings_fees::table.find(id)).set(change).returning(BookingsFee::as_returning());
    update(conn, before, query).await
}

/// Changes an account's default check-in time (republishes its rentals: `observe(...)`).
pub async fn change_check_in(conn: &mut AsyncPgConnection, id: i64, check_in: &str) -> dionysus::Result<Account> {
    let change = (accounts::default_check_in_time.eq(check_in.to_owned()), accounts::updated_at.eq(Utc::now()));
    let before = accounts::table.find(id).select(Account::as_select());
    update(conn, before, diesel::update(accounts::table.find(id)).set(change).returning(Account::as_returning())).await
}

/// Deletes a fee (republishes its rental without it).
pub async fn destroy_fee(conn: &mut AsyncPgConnection, id: i64) -> dionysus::Result<BookingsFee> {
    destroy(conn, diesel::delete(bookings_fees::table.find(id)).returning(BookingsFee::as_returning())).await
}

/// Deletes a booking (published as `booking_destroyed`).
pub async fn destroy_booking(conn: &mut AsyncPgConnection, id: i64) -> dionysus::Result<Booking> {
    destroy(conn, diesel::delete(bookings::table.find(id)).returning(Booking::as_returning())).await
}
