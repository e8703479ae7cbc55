//! The table a replica declaration expects, written as PostgreSQL DDL (what `dionysus
//! replica-ddl` prints): one column per field the consumer writes, of the type diesel maps
//! the field's type to, `NOT NULL` unless the field is an `Option`, and the unique key on
//! the synced id that the consumer's upserts need.
//!
//! This module only writes text. Checking an existing table against its declaration is the
//! consumer's start-up check; the columns of `#[consume(skip)]` fields, and any other column
//! of the table, are the application's.

use super::descriptor::ReplicaDescriptor;
use super::sql::quote_ident;

impl ReplicaDescriptor {
    /// The `CREATE TABLE` statement of the replica table, preceded by a comment naming the
    /// declaration. Call it on a descriptor resolved against the configuration
    /// ([`ReplicaDescriptor::configured`]), so that the key is on the synced id column the
    /// consumer uses.
    ///
    /// ```text
    /// -- shop::storefront::ReplicatedProduct (src/storefront.rs:12): Product from shop_products
    /// CREATE TABLE storefront_products (
    ///     synced_id bigint PRIMARY KEY,
    ///     synced_updated_at timestamp with time zone,
    ///     name text NOT NULL
    /// );
    /// ```
    pub fn create_table(&self) -> String {
        create_table(self)
    }
}

fn create_table(replica: &ReplicaDescriptor) -> String {
    let columns: Vec<String> = replica
        .columns
        .iter()
        .map(|column| {
            let constraint = match (column.name == replica.synced_id, column.nullable) {
                (true, false) => " PRIMARY KEY",
                (true, true) => " UNIQUE",
                (false, false) => " NOT NULL",
                (false, true) => "",
            };
            format!("    {} {}{constraint}", identifier(column.name), column.sql_type)
        })
        .collect();
    format!(
        "-- {} ({}): {} from {}\nCREATE TABLE {} (\n{}\n);\n",
        replica.declared_by,
        replica.location,
        replica.model,
        replica.topic,
        identifier(replica.table),
        columns.join(",\n")
    )
}

/// `name` as it can stand in DDL: as is when it is a plain lower-case identifier that is no
/// reserved word, else quoted.
fn identifier(name: &str) -> String {
    let plain = name.split('.').all(|part| {
        let mut chars = part.chars();
        chars.next().is_some_and(|first| first.is_ascii_lowercase() || first == '_')
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !RESERVED.contains(&part)
    });
    if plain {
        name.to_owned()
    } else {
        quote_ident(name)
    }
}

/// PostgreSQL's key words that cannot name a column or a table unquoted.
const RESERVED: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "binary",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "group",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "natural",
    "not",
    "notnull",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "outer",
    "overlaps",
    "placing",
    "primary",
    "references",
    "returning",
    "right",
    "select",
    "session_user",
    "similar",
    "some",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumer::replica::{Column, ColumnKind};

    const fn column(name: &'static str, sql_type: &'static str, nullable: bool) -> Column {
        Column { name, source: name, kind: ColumnKind::Text, nullable, sql_type }
    }

    static COLUMNS: [Column; 5] = [
        column("synced_id", "bigint", false),
        column("synced_updated_at", "timestamp with time zone", true),
        column("name", "text", false),
        column("order", "integer", true),
        column("fee_ids", "bigint[]", true),
    ];

    static PRODUCTS: ReplicaDescriptor = ReplicaDescriptor {
        model: "Product",
        topic: "shop_products",
        table: "storefront_products",
        columns: &COLUMNS,
        synced_updated_at: Some("synced_updated_at"),
        declared_by: "shop::storefront::ReplicatedProduct",
        location: "src/storefront.rs:12",
        ..ReplicaDescriptor::INVALID
    };

    #[test]
    fn the_table_has_each_written_column_with_its_type_and_the_synced_id_as_key() {
        assert_eq!(
            create_table(&PRODUCTS),
            "-- shop::storefront::ReplicatedProduct (src/storefront.rs:12): Product from shop_products\n\
             CREATE TABLE storefront_products (\n    \
                 synced_id bigint PRIMARY KEY,\n    \
                 synced_updated_at timestamp with time zone,\n    \
                 name text NOT NULL,\n    \
                 \"order\" integer,\n    \
                 fee_ids bigint[]\n\
             );\n"
        );
    }

    #[test]
    fn a_nullable_synced_id_is_unique_and_odd_names_are_quoted() {
        static COLUMNS: [Column; 1] = [column("remoteId", "text", true)];
        static ODD: ReplicaDescriptor = ReplicaDescriptor {
            table: "app.Products",
            columns: &COLUMNS,
            synced_id: "remoteId",
            ..ReplicaDescriptor::INVALID
        };
        let sql = create_table(&ODD);
        assert!(sql.contains("CREATE TABLE \"app\".\"Products\" (\n    \"remoteId\" text UNIQUE\n);"), "{sql}");
    }
}
