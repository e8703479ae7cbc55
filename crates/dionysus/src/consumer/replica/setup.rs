//! Whether a replica table can take what its model writes, read from PostgreSQL's catalog:
//! the table exists; every column the consumer writes exists, is not generated and has a
//! type that holds the column's kind of values; no column the model leaves out is required
//! (`NOT NULL` without a default); the synced id has a unique index (the upserts' `ON
//! CONFLICT` needs one); and the current role may use the schema and read, insert and update
//! the table (and delete from it, for the `destroy` strategy). Each problem carries its fix
//! as SQL, and [`create_table`] is the DDL of a whole replica table.
//!
//! This module owns the check and the fixes. When it runs (at start-up, and when a batch
//! fails before any of its messages is blamed) is the consumer's decision; judging the
//! catalog's answer is a pure function ([`judge`]) so the rules are tested without a
//! database.

use std::fmt;

use diesel::sql_types::{BigInt, Bool, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::column_type::ColumnKind;
use super::descriptor::{DestroyStrategy, ReplicaDescriptor};
use super::sql::quote_ident;

/// Whether a column whose (base) type is `type_name`, of type category `category`
/// (`pg_type.typcategory`), holds values of `kind`. Lenient where PostgreSQL converts
/// (any numeric type for numbers, any string or enum type for text).
fn accepts(kind: ColumnKind, type_name: &str, category: &str) -> bool {
    match kind {
        ColumnKind::Integer | ColumnKind::Float | ColumnKind::Decimal => category == "N",
        ColumnKind::Bool => category == "B",
        ColumnKind::Text => category == "S" || category == "E",
        ColumnKind::Timestamp => matches!(type_name, "timestamptz" | "timestamp"),
        ColumnKind::Date => matches!(type_name, "date" | "timestamptz" | "timestamp"),
        ColumnKind::Json => matches!(type_name, "jsonb" | "json"),
        ColumnKind::Uuid => type_name == "uuid",
        ColumnKind::Array => category == "A",
    }
}

/// `CREATE TABLE` for a replica on one line, to follow a problem's `fix:`: the statement
/// `dionysus replica-ddl` prints ([`ReplicaDescriptor::create_table`]) without its comment.
pub(crate) fn create_table(replica: &ReplicaDescriptor) -> String {
    let ddl = replica.create_table();
    let statement: Vec<&str> =
        ddl.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with("--")).collect();
    statement.join(" ").replace("( ", "(").replace(" )", ")")
}

/// One way a replica table does not fit its model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableProblem {
    /// The table, as the model names it.
    pub table: &'static str,
    /// The replica model's struct, e.g. `my_app::ReplicatedRental`.
    pub declared_by: &'static str,
    /// What is wrong.
    pub issue: TableIssue,
}

/// What is wrong with a replica table.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TableIssue {
    /// The table does not exist (or is not on the role's search path).
    MissingTable {
        /// The DDL that creates it.
        create: String,
    },
    /// A column the model writes does not exist.
    MissingColumn {
        /// The column.
        column: &'static str,
        /// The type it would be created with.
        expected: &'static str,
    },
    /// A column the model writes has a type that does not hold its values.
    WrongType {
        /// The column.
        column: &'static str,
        /// Its type in the table.
        found: String,
        /// The type the model's field needs.
        expected: &'static str,
    },
    /// A column the model writes is generated, so it cannot be written.
    GeneratedColumn {
        /// The column.
        column: &'static str,
    },
    /// A column the model does not write is `NOT NULL` without a default, so no row can be
    /// inserted.
    RequiredColumn {
        /// The column.
        column: String,
    },
    /// The synced id has no unique index (or unique constraint, or primary key) of its own.
    NoUniqueIndex {
        /// The synced id's column.
        column: &'static str,
    },
    /// The current role lacks privileges on the table.
    MissingPrivileges {
        /// `SELECT`, `INSERT`, `UPDATE`, `DELETE`: the missing ones.
        privileges: Vec<&'static str>,
        /// The role.
        role: String,
    },
    /// The current role may not use the table's schema.
    NoSchemaUsage {
        /// The schema.
        schema: String,
        /// The role.
        role: String,
    },
}

impl TableProblem {
    /// The fix, as SQL to run (or a change to the model, said in a comment).
    pub fn fix(&self) -> String {
        let table = quote_ident(self.table);
        match &self.issue {
            TableIssue::MissingTable { create } => create.clone(),
            TableIssue::MissingColumn { column, expected } => {
                format!("ALTER TABLE {table} ADD COLUMN {} {expected};", quote_ident(column))
            }
            TableIssue::WrongType { column, expected, .. } => {
                let column = quote_ident(column);
                format!("ALTER TABLE {table} ALTER COLUMN {column} TYPE {expected} USING {column}::{expected};")
            }
            TableIssue::GeneratedColumn { column } => format!(
                "ALTER TABLE {table} ALTER COLUMN {} DROP EXPRESSION; -- or mark the field #[consume(skip)]",
                quote_ident(column)
            ),
            TableIssue::RequiredColumn { column } => format!(
                "ALTER TABLE {table} ALTER COLUMN {} DROP NOT NULL; -- or give it a DEFAULT, or add the field to the model",
                quote_ident(column)
            ),
            TableIssue::NoUniqueIndex { column } => {
                format!("CREATE UNIQUE INDEX ON {table} ({});", quote_ident(column))
            }
            TableIssue::MissingPrivileges { privileges, role } => {
                format!("GRANT {} ON {table} TO {};", privileges.join(", "), quote_ident(role))
            }
            TableIssue::NoSchemaUsage { schema, role } => {
                format!("GRANT USAGE ON SCHEMA {} TO {};", quote_ident(schema), quote_ident(role))
            }
        }
    }
}

impl fmt::Display for TableProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "replica table `{}` of {}: ", self.table, self.declared_by)?;
        match &self.issue {
            TableIssue::MissingTable { .. } => write!(f, "the table does not exist")?,
            TableIssue::MissingColumn { column, expected } => {
                write!(f, "column `{column}` ({expected}) does not exist")?;
            }
            TableIssue::WrongType { column, found, expected } => {
                write!(f, "column `{column}` is `{found}`, which does not hold the field's values ({expected})")?;
            }
            TableIssue::GeneratedColumn { column } => {
                write!(f, "column `{column}` is generated, so the consumer cannot write it")?;
            }
            TableIssue::RequiredColumn { column } => write!(
                f,
                "column `{column}` is NOT NULL without a default and the model does not write it, so no row can be inserted"
            )?,
            TableIssue::NoUniqueIndex { column } => {
                write!(f, "no unique index on `{column}` (the synced id; every upsert needs one)")?;
            }
            TableIssue::MissingPrivileges { privileges, role } => {
                write!(f, "role `{role}` lacks {} on it", privileges.join(", "))?;
            }
            TableIssue::NoSchemaUsage { schema, role } => write!(f, "role `{role}` may not use schema `{schema}`")?,
        }
        write!(f, "; fix: {}", self.fix())
    }
}

/// Replica tables that do not fit their models: the database is not set up for the
/// consumer. Each problem says its fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SetupError {
    /// The problems, table by table.
    pub problems: Vec<TableProblem>,
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        write!(
            f,
            "the replica tables do not fit their models ({count} problem{}):",
            if count == 1 { "" } else { "s" }
        )?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

/// The table as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub(crate) struct TableInfo {
    #[diesel(sql_type = BigInt)]
    oid: i64,
    #[diesel(sql_type = Text)]
    schema: String,
    #[diesel(sql_type = Text)]
    role: String,
    #[diesel(sql_type = Bool)]
    schema_usage: bool,
    #[diesel(sql_type = Bool)]
    can_select: bool,
    #[diesel(sql_type = Bool)]
    can_insert: bool,
    #[diesel(sql_type = Bool)]
    can_update: bool,
    #[diesel(sql_type = Bool)]
    can_delete: bool,
}

/// One column as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub(crate) struct ColumnInfo {
    #[diesel(sql_type = Text)]
    name: String,
    /// `format_type`, e.g. `character varying(20)`.
    #[diesel(sql_type = Text)]
    sql_type: String,
    /// The type's name, a domain's base type's: `int8`, `timestamptz`, `_int8`.
    #[diesel(sql_type = Text)]
    base_type: String,
    /// `pg_type.typcategory`: `N` numeric, `S` string, `A` array, …
    #[diesel(sql_type = Text)]
    category: String,
    #[diesel(sql_type = Bool)]
    not_null: bool,
    /// A default, or an identity column.
    #[diesel(sql_type = Bool)]
    has_default: bool,
    #[diesel(sql_type = Bool)]
    generated: bool,
}

#[derive(QueryableByName)]
struct Found {
    #[diesel(sql_type = Bool)]
    found: bool,
}

/// What the catalog says of a replica's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Catalog {
    /// `None`: no such table.
    table: Option<TableInfo>,
    columns: Vec<ColumnInfo>,
    /// Whether the synced id has a unique index of its own.
    unique_synced_id: bool,
}

/// Reads what the check needs of `replica`'s table: three catalog queries.
async fn read_catalog(
    conn: &mut AsyncPgConnection,
    replica: &ReplicaDescriptor,
) -> Result<Catalog, diesel::result::Error> {
    let tables: Vec<TableInfo> = diesel::sql_query(
        "SELECT c.oid::int8 AS oid, n.nspname::text AS schema, current_user::text AS role, \
                has_schema_privilege(n.oid, 'USAGE') AS schema_usage, \
                has_table_privilege(c.oid, 'SELECT') OR has_any_column_privilege(c.oid, 'SELECT') AS can_select, \
                has_table_privilege(c.oid, 'INSERT') OR has_any_column_privilege(c.oid, 'INSERT') AS can_insert, \
                has_table_privilege(c.oid, 'UPDATE') OR has_any_column_privilege(c.oid, 'UPDATE') AS can_update, \
                has_table_privilege(c.oid, 'DELETE') AS can_delete \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)",
    )
    .bind::<Text, _>(quote_ident(replica.table))
    .load(conn)
    .await?;
    let Some(table) = tables.into_iter().next() else {
        return Ok(Catalog { table: None, columns: Vec::new(), unique_synced_id: false });
    };
    let columns: Vec<ColumnInfo> = diesel::sql_query(
        "SELECT a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS sql_type, \
                b.typname::text AS base_type, b.typcategory::text AS category, a.attnotnull AS not_null, \
                (a.atthasdef OR a.attidentity <> '') AS has_default, a.attgenerated <> '' AS generated \
         FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
         JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END \
         WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
    )
    .bind::<BigInt, _>(table.oid)
    .load(conn)
    .await?;
    // What `ON CONFLICT (synced_id)` can use: a valid, immediate, non-partial unique index
    // whose only key is the column.
    let unique: Vec<Found> = diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM pg_index i \
                JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
                WHERE i.indrelid = $1::oid AND i.indisunique AND i.indisvalid AND i.indimmediate \
                  AND i.indpred IS NULL AND i.indnkeyatts = 1 AND a.attname = $2) AS found",
    )
    .bind::<BigInt, _>(table.oid)
    .bind::<Text, _>(replica.synced_id)
    .load(conn)
    .await?;
    let unique_synced_id = unique.into_iter().next().is_some_and(|row| row.found);
    Ok(Catalog { table: Some(table), columns, unique_synced_id })
}

/// The problems of `replica`'s table as `catalog` describes it; none when it fits.
pub(crate) fn judge(replica: &ReplicaDescriptor, catalog: &Catalog) -> Vec<TableProblem> {
    let problem = |issue| TableProblem { table: replica.table, declared_by: replica.declared_by, issue };
    let Some(table) = &catalog.table else {
        return vec![problem(TableIssue::MissingTable { create: create_table(replica) })];
    };
    let mut problems = Vec::new();
    if !table.schema_usage {
        problems.push(problem(TableIssue::NoSchemaUsage { schema: table.schema.clone(), role: table.role.clone() }));
    }
    let deletes = replica.strategy == DestroyStrategy::Destroy;
    let privileges: Vec<&'static str> = [
        ("SELECT", table.can_select),
        ("INSERT", table.can_insert),
        ("UPDATE", table.can_update),
        ("DELETE", table.can_delete || !deletes),
    ]
    .into_iter()
    .filter(|(_, granted)| !granted)
    .map(|(privilege, _)| privilege)
    .collect();
    if !privileges.is_empty() {
        problems.push(problem(TableIssue::MissingPrivileges { privileges, role: table.role.clone() }));
    }
    for column in replica.columns {
        let Some(found) = catalog.columns.iter().find(|found| found.name == column.name) else {
            problems.push(problem(TableIssue::MissingColumn { column: column.name, expected: column.sql_type }));
            continue;
        };
        if found.generated {
            problems.push(problem(TableIssue::GeneratedColumn { column: column.name }));
        } else if !accepts(column.kind, &found.base_type, &found.category) {
            problems.push(problem(TableIssue::WrongType {
                column: column.name,
                found: found.sql_type.clone(),
                expected: column.sql_type,
            }));
        }
    }
    for found in &catalog.columns {
        let written = replica.columns.iter().any(|column| column.name == found.name);
        if !written && found.not_null && !found.has_default && !found.generated {
            problems.push(problem(TableIssue::RequiredColumn { column: found.name.clone() }));
        }
    }
    if replica.column(replica.synced_id).is_some() && !catalog.unique_synced_id {
        problems.push(problem(TableIssue::NoUniqueIndex { column: replica.synced_id }));
    }
    problems
}

/// Checks the tables of `replicas` against their models (each table once): every problem
/// found, none when they all fit. The error is a catalog query that failed.
pub(crate) async fn check_tables(
    conn: &mut AsyncPgConnection,
    replicas: &[&'static ReplicaDescriptor],
) -> Result<Vec<TableProblem>, diesel::result::Error> {
    let mut seen: Vec<&'static str> = Vec::new();
    let mut problems = Vec::new();
    for &replica in replicas {
        if seen.contains(&replica.table) {
            continue;
        }
        seen.push(replica.table);
        let catalog = read_catalog(conn, replica).await?;
        problems.extend(judge(replica, &catalog));
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumer::replica::{Column, NamedRoles};

    const COLUMNS: [Column; 4] = [
        Column::named("synced_id", ColumnKind::Integer, false),
        Column::named("synced_updated_at", ColumnKind::Timestamp, true),
        Column::named("name", ColumnKind::Text, true),
        Column::named("synced_data", ColumnKind::Json, true),
    ];

    const WIDGETS: ReplicaDescriptor = ReplicaDescriptor {
        model: "Widget",
        topic: "widgets",
        table: "widgets",
        columns: &COLUMNS,
        synced_id: "synced_id",
        synced_updated_at: Some("synced_updated_at"),
        synced_created_at: None,
        soft_delete: None,
        strategy: DestroyStrategy::Destroy,
        synced_data: Some("synced_data"),
        named: NamedRoles::NONE,
        declared_by: "app::Widget",
        location: "src/widget.rs:1",
    };

    fn column(name: &str, base_type: &str, category: &str) -> ColumnInfo {
        ColumnInfo {
            name: name.to_owned(),
            sql_type: base_type.to_owned(),
            base_type: base_type.to_owned(),
            category: category.to_owned(),
            not_null: false,
            has_default: false,
            generated: false,
        }
    }

    fn fitting() -> Catalog {
        Catalog {
            table: Some(TableInfo {
                oid: 1,
                schema: "public".to_owned(),
                role: "app".to_owned(),
                schema_usage: true,
                can_select: true,
                can_insert: true,
                can_update: true,
                can_delete: true,
            }),
            columns: vec![
                column("id", "int8", "N"),
                column("synced_id", "int8", "N"),
                column("synced_updated_at", "timestamptz", "D"),
                column("name", "varchar", "S"),
                column("synced_data", "jsonb", "U"),
            ],
            unique_synced_id: true,
        }
    }

    fn issues(catalog: &Catalog) -> Vec<TableIssue> {
        judge(&WIDGETS, catalog).into_iter().map(|problem| problem.issue).collect()
    }

    #[test]
    fn a_fitting_table_has_no_problem() {
        assert_eq!(issues(&fitting()), []);
    }

    #[test]
    fn a_missing_table_is_reported_with_its_ddl() {
        let problems = judge(&WIDGETS, &Catalog { table: None, columns: Vec::new(), unique_synced_id: false });
        assert_eq!(problems.len(), 1);
        assert_eq!(
            problems[0].fix(),
            "CREATE TABLE widgets (synced_id bigint PRIMARY KEY, synced_updated_at timestamp with time zone, name \
             text, synced_data jsonb);"
        );
        assert!(problems[0]
            .to_string()
            .starts_with("replica table `widgets` of app::Widget: the table does not exist"));
    }

    #[test]
    fn a_missing_column_says_the_alter_table_that_adds_it() {
        let mut catalog = fitting();
        catalog.columns.retain(|column| column.name != "name");
        let problems = judge(&WIDGETS, &catalog);
        assert_eq!(
            problems.iter().map(|p| p.issue.clone()).collect::<Vec<_>>(),
            [TableIssue::MissingColumn { column: "name", expected: "text" }]
        );
        assert_eq!(
            problems[0].to_string(),
            "replica table `widgets` of app::Widget: column `name` (text) does not exist; fix: ALTER TABLE \
             \"widgets\" ADD COLUMN \"name\" text;"
        );
    }

    #[test]
    fn a_type_that_cannot_hold_the_values_is_reported_and_a_close_one_is_not() {
        let mut catalog = fitting();
        catalog.columns[3] = column("name", "int4", "N");
        // A domain over jsonb is judged by its base type.
        catalog.columns[4] = ColumnInfo { sql_type: "payload".to_owned(), ..column("synced_data", "jsonb", "U") };
        assert_eq!(
            issues(&catalog),
            [TableIssue::WrongType { column: "name", found: "int4".to_owned(), expected: "text" }]
        );
        catalog.columns[3] = column("name", "citext", "S");
        catalog.columns[2] = column("synced_updated_at", "timestamp", "D");
        assert_eq!(issues(&catalog), []);
    }

    #[test]
    fn a_required_column_the_model_leaves_out_is_reported_unless_it_has_a_default() {
        let mut catalog = fitting();
        catalog.columns.push(ColumnInfo { not_null: true, ..column("owner", "text", "S") });
        assert_eq!(issues(&catalog), [TableIssue::RequiredColumn { column: "owner".to_owned() }]);
        catalog.columns.last_mut().unwrap().has_default = true;
        assert_eq!(issues(&catalog), []);
    }

    #[test]
    fn a_generated_column_cannot_be_written() {
        let mut catalog = fitting();
        catalog.columns[3].generated = true;
        assert_eq!(issues(&catalog), [TableIssue::GeneratedColumn { column: "name" }]);
    }

    #[test]
    fn the_synced_id_needs_a_unique_index() {
        let catalog = Catalog { unique_synced_id: false, ..fitting() };
        let problems = judge(&WIDGETS, &catalog);
        assert_eq!(problems[0].issue, TableIssue::NoUniqueIndex { column: "synced_id" });
        assert_eq!(problems[0].fix(), "CREATE UNIQUE INDEX ON \"widgets\" (\"synced_id\");");
    }

    #[test]
    fn missing_privileges_are_granted_by_the_fix() {
        let mut catalog = fitting();
        let table = catalog.table.as_mut().unwrap();
        table.can_update = false;
        table.can_delete = false;
        table.schema_usage = false;
        let problems = judge(&WIDGETS, &catalog);
        assert_eq!(problems.len(), 2);
        assert_eq!(problems[0].fix(), "GRANT USAGE ON SCHEMA \"public\" TO \"app\";");
        assert_eq!(problems[1].fix(), "GRANT UPDATE, DELETE ON \"widgets\" TO \"app\";");
        // Only the destroy strategy deletes rows.
        let cancelling = ReplicaDescriptor { strategy: DestroyStrategy::Cancel, soft_delete: Some("name"), ..WIDGETS };
        let fixes: Vec<String> = judge(&cancelling, &catalog).iter().map(TableProblem::fix).collect();
        assert_eq!(fixes[1], "GRANT UPDATE ON \"widgets\" TO \"app\";");
    }

    #[test]
    fn every_kind_is_accepted_by_the_type_it_is_created_with() {
        let created = [
            (ColumnKind::Integer, "int8", "N"),
            (ColumnKind::Float, "float8", "N"),
            (ColumnKind::Decimal, "numeric", "N"),
            (ColumnKind::Bool, "bool", "B"),
            (ColumnKind::Text, "text", "S"),
            (ColumnKind::Timestamp, "timestamptz", "D"),
            (ColumnKind::Date, "date", "D"),
            (ColumnKind::Json, "jsonb", "U"),
            (ColumnKind::Uuid, "uuid", "U"),
            (ColumnKind::Array, "_text", "A"),
        ];
        for (kind, type_name, category) in created {
            assert!(accepts(kind, type_name, category), "{kind:?}");
        }
        assert!(!accepts(ColumnKind::Json, "text", "S"));
        assert!(!accepts(ColumnKind::Timestamp, "date", "D"));
    }
}
