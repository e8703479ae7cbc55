//! Does the replica match the source? For each table, the compared columns of both sides,
//! ordered by id, are rendered as PostgreSQL row texts and hashed with md5 on each server;
//! equal checksums mean equal data. When they differ, the rows are read and the differences
//! listed.

use std::cmp::Ordering;

use anyhow::Context as _;
use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

/// One compared table: the same columns, in the same order and types, on both sides; the
/// first is the id.
pub struct Compared {
    /// Table name (the same on both sides).
    pub table: &'static str,
    /// Query of the producer's rows.
    pub source: &'static str,
    /// Query of the consumer's rows.
    pub replica: &'static str,
}

/// What the demo compares. Timestamps are compared at millisecond precision, the precision of
/// the wire format. A fee the source deleted is still in the replica, detached from its rental
/// (dionysus-rb never deletes sideloaded rows), so only attached fees are compared.
pub const COMPARED: [Compared; 4] = [
    Compared {
        table: "accounts",
        source: "SELECT id, name, default_check_in_time FROM accounts",
        replica: "SELECT synced_id AS id, name, default_check_in_time FROM accounts",
    },
    Compared {
        table: "rentals",
        source: "SELECT id, account_id, name, daily_price_cents, date_trunc('milliseconds', canceled_at) FROM rentals",
        replica: "SELECT synced_id AS id, account_id, name, daily_price, synced_canceled_at FROM rentals",
    },
    Compared {
        table: "bookings_fees",
        source: "SELECT id, rental_id, name, amount_cents FROM bookings_fees",
        replica: "SELECT synced_id AS id, synced_rental_id, name, amount_cents FROM bookings_fees \
                  WHERE synced_rental_id IS NOT NULL",
    },
    Compared {
        table: "bookings",
        source: "SELECT id, rental_id, start_on, nights FROM bookings",
        replica: "SELECT synced_id AS id, rental_id, start_on, nights FROM bookings",
    },
];

/// Row count and md5 of one side of a table.
#[derive(Debug, PartialEq, Eq, diesel::QueryableByName)]
pub struct Checksum {
    /// Rows.
    #[diesel(sql_type = BigInt)]
    pub rows: i64,
    /// md5 of the row texts, one per line, ordered by id.
    #[diesel(sql_type = Text)]
    pub md5: String,
}

#[derive(diesel::QueryableByName)]
struct Line {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    line: String,
}

/// The checksum of the rows `query` selects.
pub async fn checksum(conn: &mut AsyncPgConnection, query: &str) -> anyhow::Result<Checksum> {
    let sql = format!(
        "SELECT count(*) AS rows, md5(coalesce(string_agg(r::text, E'\\n' ORDER BY r.id), '')) AS md5 FROM ({query}) r"
    );
    diesel::sql_query(sql).get_result(conn).await.with_context(|| format!("computing the checksum of `{query}`"))
}

/// The rows that differ between both sides, described, at most `limit` of them.
pub async fn differences(
    source: &mut AsyncPgConnection,
    replica: &mut AsyncPgConnection,
    compared: &Compared,
    limit: usize,
) -> anyhow::Result<Vec<String>> {
    let lines = async |conn: &mut AsyncPgConnection, query: &str| -> anyhow::Result<Vec<Line>> {
        let sql = format!("SELECT r.id, r::text AS line FROM ({query}) r ORDER BY r.id");
        diesel::sql_query(sql).load(conn).await.with_context(|| format!("reading `{query}`"))
    };
    let source = lines(source, compared.source).await?;
    let replica = lines(replica, compared.replica).await?;
    Ok(diff(source, replica, limit))
}

/// Merges two lists of rows ordered by id into descriptions of what differs.
fn diff(source: Vec<Line>, replica: Vec<Line>, limit: usize) -> Vec<String> {
    let (mut source, mut replica) = (source.into_iter().peekable(), replica.into_iter().peekable());
    let mut found = Vec::new();
    while found.len() < limit {
        let order = match (source.peek(), replica.peek()) {
            (None, None) => break,
            (Some(a), Some(b)) => a.id.cmp(&b.id),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
        };
        let a = if order.is_le() { source.next() } else { None };
        let b = if order.is_ge() { replica.next() } else { None };
        match (a, b) {
            (Some(a), Some(b)) if a.line != b.line => {
                found.push(format!("id {}: source {} / replica {}", a.id, a.line, b.line));
            }
            (Some(a), None) => found.push(format!("id {}: only in the source {}", a.id, a.line)),
            (None, Some(b)) => found.push(format!("id {}: only in the replica {}", b.id, b.line)),
            _ => {}
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(rows: &[(i64, &str)]) -> Vec<Line> {
        rows.iter().map(|(id, line)| Line { id: *id, line: (*line).to_owned() }).collect()
    }

    #[test]
    fn differences_name_changed_missing_and_extra_rows() {
        let source = lines(&[(1, "(1,a)"), (2, "(2,b)"), (4, "(4,d)")]);
        let replica = lines(&[(1, "(1,a)"), (2, "(2,B)"), (3, "(3,c)")]);
        assert_eq!(
            diff(source, replica, 10),
            ["id 2: source (2,b) / replica (2,B)", "id 3: only in the replica (3,c)", "id 4: only in the source (4,d)",]
        );
        assert_eq!(diff(lines(&[(1, "x"), (2, "y")]), Vec::new(), 1).len(), 1, "stops at the limit");
        assert!(diff(lines(&[(1, "x")]), lines(&[(1, "x")]), 10).is_empty());
    }
}
