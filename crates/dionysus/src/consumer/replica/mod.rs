//! Replica models: the tables a consumer keeps in sync with another service's records.
//!
//! `#[derive(Consume)]` describes a diesel struct as a [`ReplicaDescriptor`] (table, columns,
//! source model, soft-delete rules) and registers it; this module owns those descriptions,
//! the canonical form of incoming records ([`Record`], dionysus-rb's C-6, in `deserialize`), the
//! persistence rules that turn a record into a row change (`plan`, C-9 … C-14), the table a
//! declaration expects ([`ReplicaDescriptor::create_table`]), and what an existing replica table
//! must be for those changes to be written (`setup`: the check against the catalog, each problem
//! with its fix). Executing the changes against PostgreSQL is `sql`'s job; reading Kafka is
//! `consumer`'s.

pub(crate) mod column_type;
mod ddl;
pub(crate) mod descriptor;
pub(crate) mod deserialize;
pub(crate) mod names;
pub(crate) mod plan;
mod setup;
pub(crate) mod sql;

pub use column_type::{ColumnKind, ColumnType};
pub use descriptor::{CancelValue, Column, DestroyStrategy, NamedRoles, Replica, ReplicaDescriptor, Replicas};
pub use deserialize::Record;
pub use names::ReplicaError;
pub use plan::ChangeSet;
pub(crate) use setup::check_tables;
pub use setup::{SetupError, TableIssue, TableProblem};
