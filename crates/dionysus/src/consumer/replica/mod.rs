//! Replica models: the tables a consumer keeps in sync with another service's records.
//!
//! `#[derive(Consume)]` describes a diesel struct as a [`ReplicaDescriptor`] (table, columns,
//! source model, soft-delete rules) and registers it; this module owns those descriptions,
//! the canonical form of incoming records ([`mod@deserialize`], dionysus-rb's C-6), and the
//! persistence rules that turn a record into a row change ([`plan`], C-9 … C-14), the table a
//! declaration expects ([`ReplicaDescriptor::create_table`]), and what an existing replica table
//! must be for those changes to be written (`setup`: the check against the catalog, each problem
//! with its fix). Executing the changes against PostgreSQL is [`sql`]'s job; reading Kafka is
//! `consumer`'s.

mod column_type;
mod ddl;
mod descriptor;
pub mod deserialize;
pub mod names;
pub mod plan;
mod setup;
pub mod sql;

#[doc(hidden)]
pub use column_type::payload_column;
pub use column_type::{ColumnKind, ColumnType, PayloadColumn};
pub use descriptor::{
    CancelValue, Column, DestroyStrategy, NamedRoles, Replica, ReplicaDescriptor, ReplicaEntry, Replicas,
};
pub use deserialize::{deserialize, deserialize_one, Record};
pub use plan::{ChangeSet, RowPlan};
pub(crate) use setup::check_tables;
pub use setup::{SetupError, TableIssue, TableProblem};
