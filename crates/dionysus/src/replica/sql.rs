//! Set-based SQL for replica tables: each function is one statement for any number of rows,
//! with the rows passed as one `jsonb` array and turned into the table's row type by
//! PostgreSQL (`jsonb_populate_recordset(NULL::<table>, $1)`), so column types come from the
//! table itself and no statement is issued per row.
//!
//! This module owns the statements; deciding which rows to write is `plan`'s job, and
//! transactions and offsets belong to the consumer.

use std::collections::HashMap;

use diesel::sql_types::{Array, BigInt, Integer, Jsonb, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::{Map, Value};

use super::ReplicaDescriptor;

/// `"name"`, with embedded quotes doubled; a dotted name quotes each part (`"app"."rentals"`).
pub fn quote_ident(name: &str) -> String {
    name.split('.').map(|part| format!("\"{}\"", part.replace('"', "\"\""))).collect::<Vec<_>>().join(".")
}

/// The key identifying a row by its synced id in maps: the id's text.
pub fn id_key(id: &Value) -> String {
    match id {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

#[derive(QueryableByName)]
struct JsonRow {
    #[diesel(sql_type = Jsonb)]
    row: Value,
}

#[derive(QueryableByName)]
struct OffsetRow {
    #[diesel(sql_type = BigInt)]
    next_offset: i64,
}

/// The current rows of the given synced ids, locked for this transaction (`FOR UPDATE`),
/// keyed by [`id_key`].
pub async fn load_rows(
    conn: &mut AsyncPgConnection,
    replica: &ReplicaDescriptor,
    ids: &[Value],
) -> Result<HashMap<String, Map<String, Value>>, diesel::result::Error> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let table = quote_ident(replica.table);
    let id = quote_ident(replica.synced_id);
    let sql = format!(
        "SELECT to_jsonb(t) AS row FROM {table} t \
         WHERE t.{id} IN (SELECT s.{id} FROM jsonb_populate_recordset(NULL::{table}, $1) s) \
         ORDER BY t.{id} FOR UPDATE OF t"
    );
    let keys: Vec<Value> = ids.iter().map(|value| single(replica.synced_id, value.clone())).collect();
    let rows: Vec<JsonRow> = diesel::sql_query(sql).bind::<Jsonb, _>(Value::Array(keys)).load(conn).await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| match row.row {
            Value::Object(object) => Some((id_key(object.get(replica.synced_id).unwrap_or(&Value::Null)), object)),
            _ => None,
        })
        .collect())
}

fn single(name: &str, value: Value) -> Value {
    let mut object = Map::new();
    object.insert(name.to_owned(), value);
    Value::Object(object)
}

/// The timestamp guard in SQL (C-10): the stored row is only overwritten when it has no
/// `synced_updated_at`, or the incoming one is missing, or not older. `new` is the alias of
/// the incoming row.
fn guard(replica: &ReplicaDescriptor, new: &str) -> String {
    let updated = quote_ident(replica.synced_updated_at);
    format!("(t.{updated} IS NULL OR {new}.{updated} IS NULL OR {new}.{updated} >= t.{updated})")
}

/// Updates existing rows to the given complete rows (every column of the model), guarded.
pub async fn update_rows(
    conn: &mut AsyncPgConnection,
    replica: &ReplicaDescriptor,
    rows: Vec<Map<String, Value>>,
) -> Result<usize, diesel::result::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let table = quote_ident(replica.table);
    let id = quote_ident(replica.synced_id);
    let assignments: Vec<String> = replica
        .columns
        .iter()
        .filter(|column| column.name != replica.synced_id)
        .map(|column| format!("{name} = s.{name}", name = quote_ident(column.name)))
        .collect();
    if assignments.is_empty() {
        return Ok(0);
    }
    let sql = format!(
        "UPDATE {table} AS t SET {} FROM jsonb_populate_recordset(NULL::{table}, $1) AS s \
         WHERE t.{id} = s.{id} AND {}",
        assignments.join(", "),
        guard(replica, "s")
    );
    let rows: Vec<Value> = rows.into_iter().map(Value::Object).collect();
    diesel::sql_query(sql).bind::<Jsonb, _>(Value::Array(rows)).execute(conn).await
}

/// Inserts new rows; each row only sets the columns it has (the others take their
/// defaults). A row that appeared meanwhile is updated under the timestamp guard unless
/// `guarded` is false (import mode, C-8).
pub async fn insert_rows(
    conn: &mut AsyncPgConnection,
    replica: &ReplicaDescriptor,
    rows: Vec<Map<String, Value>>,
    guarded: bool,
) -> Result<usize, diesel::result::Error> {
    // One statement per distinct column set, in first-appearance order.
    let mut groups: Vec<(Vec<String>, Vec<Value>)> = Vec::new();
    for row in rows {
        let mut columns: Vec<String> = row.keys().cloned().collect();
        columns.sort();
        match groups.iter_mut().find(|(group, _)| *group == columns) {
            Some((_, members)) => members.push(Value::Object(row)),
            None => groups.push((columns, vec![Value::Object(row)])),
        }
    }
    let table = quote_ident(replica.table);
    let id = quote_ident(replica.synced_id);
    let mut written = 0;
    for (columns, members) in groups {
        let list: Vec<String> = columns.iter().map(|column| quote_ident(column)).collect();
        let updates: Vec<String> = columns
            .iter()
            .filter(|column| column.as_str() != replica.synced_id)
            .map(|column| format!("{name} = EXCLUDED.{name}", name = quote_ident(column)))
            .collect();
        let conflict = if updates.is_empty() {
            "DO NOTHING".to_owned()
        } else if guarded && columns.iter().any(|column| column == replica.synced_updated_at) {
            format!("DO UPDATE SET {} WHERE {}", updates.join(", "), guard(replica, "EXCLUDED"))
        } else {
            format!("DO UPDATE SET {}", updates.join(", "))
        };
        let sql = format!(
            "INSERT INTO {table} AS t ({list}) SELECT {list} FROM jsonb_populate_recordset(NULL::{table}, $1) \
             ON CONFLICT ({id}) {conflict}",
            list = list.join(", ")
        );
        written += diesel::sql_query(sql).bind::<Jsonb, _>(Value::Array(members)).execute(conn).await?;
    }
    Ok(written)
}

/// Deletes the rows of the given synced ids.
pub async fn delete_rows(
    conn: &mut AsyncPgConnection,
    replica: &ReplicaDescriptor,
    ids: &[Value],
) -> Result<usize, diesel::result::Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    let table = quote_ident(replica.table);
    let id = quote_ident(replica.synced_id);
    let sql = format!(
        "DELETE FROM {table} AS t USING jsonb_populate_recordset(NULL::{table}, $1) AS s WHERE t.{id} = s.{id}"
    );
    let keys: Vec<Value> = ids.iter().map(|value| single(replica.synced_id, value.clone())).collect();
    diesel::sql_query(sql).bind::<Jsonb, _>(Value::Array(keys)).execute(conn).await
}

/// Resolves to-many relationships (C-16 `resolve_to_many_association`): for each
/// `(parent id, child ids)`, the listed children get `foreign_key = parent` and the other
/// children of that parent are detached (`foreign_key = NULL`).
pub async fn resolve_to_many(
    conn: &mut AsyncPgConnection,
    child: &ReplicaDescriptor,
    foreign_key: &str,
    links: Vec<(Value, Vec<Value>)>,
) -> Result<(), diesel::result::Error> {
    if links.is_empty() {
        return Ok(());
    }
    let table = quote_ident(child.table);
    let id = quote_ident(child.synced_id);
    let fk = quote_ident(foreign_key);
    let payload: Vec<Value> = links
        .into_iter()
        .map(|(parent, ids)| {
            let mut object = Map::new();
            object.insert("parent".to_owned(), parent);
            object.insert("ids".to_owned(), Value::Array(ids));
            Value::Object(object)
        })
        .collect();
    let detach = format!(
        "UPDATE {table} AS t SET {fk} = NULL FROM jsonb_array_elements($1) AS p(link) \
         WHERE to_jsonb(t.{fk}) = p.link->'parent' AND NOT (p.link->'ids' @> jsonb_build_array(to_jsonb(t.{id})))"
    );
    let attach = format!(
        "UPDATE {table} AS t SET {fk} = (jsonb_populate_record(NULL::{table}, jsonb_build_object('{key}', p.link->'parent'))).{fk} \
         FROM jsonb_array_elements($1) AS p(link) \
         WHERE p.link->'ids' @> jsonb_build_array(to_jsonb(t.{id})) AND to_jsonb(t.{fk}) IS DISTINCT FROM p.link->'parent'",
        key = foreign_key.replace('\'', "''"),
    );
    let payload = Value::Array(payload);
    diesel::sql_query(detach).bind::<Jsonb, _>(payload.clone()).execute(conn).await?;
    diesel::sql_query(attach).bind::<Jsonb, _>(payload).execute(conn).await?;
    Ok(())
}

/// Takes the per-message processing locks (C-3's processing mutex) as PostgreSQL advisory
/// transaction locks, all in one statement and in a fixed order so batches cannot deadlock.
pub async fn advisory_locks(conn: &mut AsyncPgConnection, names: Vec<String>) -> Result<(), diesel::result::Error> {
    if names.is_empty() {
        return Ok(());
    }
    diesel::sql_query(
        "SELECT count(pg_advisory_xact_lock(h)) FROM \
         (SELECT DISTINCT hashtextextended(n, 0) AS h FROM unnest($1::text[]) AS n ORDER BY h) AS locks",
    )
    .bind::<Array<Text>, _>(names)
    .execute(conn)
    .await?;
    Ok(())
}

/// The stored next offset of a partition, locking its row for this transaction (the row is
/// created with `-1`, "nothing stored", when missing), so two consumers of one partition
/// serialize here.
pub async fn lock_offset(
    conn: &mut AsyncPgConnection,
    group: &str,
    topic: &str,
    partition: i32,
) -> Result<Option<i64>, diesel::result::Error> {
    let rows: Vec<OffsetRow> = diesel::sql_query(
        "INSERT INTO dionysus_consumer_offsets (group_id, topic, partition, next_offset) VALUES ($1, $2, $3, -1) \
         ON CONFLICT (group_id, topic, partition) DO UPDATE SET next_offset = dionysus_consumer_offsets.next_offset \
         RETURNING next_offset",
    )
    .bind::<Text, _>(group)
    .bind::<Text, _>(topic)
    .bind::<Integer, _>(partition)
    .load(conn)
    .await?;
    Ok(rows.into_iter().next().map(|row| row.next_offset).filter(|offset| *offset >= 0))
}

/// Stores the next offset of a partition (in the batch's transaction).
pub async fn store_offset(
    conn: &mut AsyncPgConnection,
    group: &str,
    topic: &str,
    partition: i32,
    next_offset: i64,
) -> Result<(), diesel::result::Error> {
    diesel::sql_query(
        "UPDATE dionysus_consumer_offsets SET next_offset = $4, updated_at = now() \
         WHERE group_id = $1 AND topic = $2 AND partition = $3",
    )
    .bind::<Text, _>(group)
    .bind::<Text, _>(topic)
    .bind::<Integer, _>(partition)
    .bind::<BigInt, _>(next_offset)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(QueryableByName)]
struct StoredOffset {
    #[diesel(sql_type = Text)]
    topic: String,
    #[diesel(sql_type = Integer)]
    partition: i32,
    #[diesel(sql_type = BigInt)]
    next_offset: i64,
}

/// Every stored offset of a group: `(topic, partition) → next offset`.
pub async fn stored_offsets(
    conn: &mut AsyncPgConnection,
    group: &str,
) -> Result<HashMap<(String, i32), i64>, diesel::result::Error> {
    let rows: Vec<StoredOffset> = diesel::sql_query(
        "SELECT topic, partition, next_offset FROM dionysus_consumer_offsets WHERE group_id = $1 AND next_offset >= 0",
    )
    .bind::<Text, _>(group)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|row| ((row.topic, row.partition), row.next_offset)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("rentals"), "\"rentals\"");
        assert_eq!(quote_ident("app.rentals"), "\"app\".\"rentals\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(id_key(&Value::from(12)), "12");
        assert_eq!(id_key(&Value::from("a")), "a");
    }
}
