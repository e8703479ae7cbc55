//! The typed model of a `#[derive(Consume)]` as written, keeping the original syn nodes and
//! spans. Settings that name fields are kept as written; `validate` checks them and `expand`
//! trusts them.

use proc_macro2::Span;
use syn::{Generics, Ident, LitStr, Path, Type};

use crate::attr::Name;
use crate::avro::SchemaRef;
use crate::symbol::Symbol;

/// A replica struct.
pub(crate) struct Replica {
    pub(crate) ident: Ident,
    pub(crate) generics: Generics,
    /// `#[diesel(table_name = ...)]`.
    pub(crate) table: Option<Path>,
    /// Whether `table_name` was written, valid or not.
    pub(crate) table_given: bool,
    pub(crate) topic: Option<LitStr>,
    pub(crate) model: Option<LitStr>,
    /// `schema = "com.example.Rental"`: records of this Avro schema are read into the
    /// struct; its fields are checked against it.
    pub(crate) schema: Option<SchemaRef>,
    /// The attribute roles named by `#[consume(role = "column")]` or a field's
    /// `#[consume(role)]` (C-11); the others are resolved at run time.
    pub(crate) synced_id: Option<Name>,
    pub(crate) synced_created_at: Option<Name>,
    pub(crate) synced_updated_at: Option<Name>,
    pub(crate) soft_delete: Option<Name>,
    /// `synced_data = field`, when given.
    pub(crate) synced_data: Option<Name>,
    pub(crate) strategy: Option<(Strategy, LitStr)>,
    /// `cancel = set(column = "status", value = "cancelled")`.
    pub(crate) cancel: Option<Cancel>,
    /// `cascade(Rental -> Booking)`: related records republished from the ids of the
    /// consumed records.
    pub(crate) cascades: Vec<crate::cascade::Cascade>,
    /// The first `consume` attribute's key, where missing keys are reported.
    pub(crate) consume_span: Option<Span>,
    /// Whether every `consume` attribute parsed (otherwise missing keys are not reported).
    pub(crate) consume_complete: bool,
    /// The fields the consumer writes (not `#[consume(skip)]`), in declaration order.
    pub(crate) fields: Vec<Field>,
}

impl Replica {
    /// The field writing a column.
    pub(crate) fn field(&self, column: &str) -> Option<&Field> {
        self.fields.iter().find(|field| field.column.value == column)
    }

    /// The field keeping the whole payload: `synced_data = …`, else a field named
    /// `synced_data`.
    pub(crate) fn synced_data_field(&self) -> Option<&Field> {
        match &self.synced_data {
            Some(name) => self.field(&name.value),
            None => self.field("synced_data"),
        }
    }

    /// A role's column with the default attribute names: the named one, else the field of
    /// the default name, if any.
    pub(crate) fn role(&self, named: Option<&Name>, default: &str) -> Option<&Field> {
        match named {
            Some(name) => self.field(&name.value),
            None => self.field(default),
        }
    }

    /// The soft-delete column with the default attribute names.
    pub(crate) fn soft_delete_field(&self) -> Option<&Field> {
        self.role(self.soft_delete.as_ref(), "synced_canceled_at")
    }

    /// Whether the declaration chooses what a `_destroyed` event does.
    pub(crate) fn strategy_named(&self) -> bool {
        self.strategy.is_some() || self.cancel.is_some()
    }

    /// What a `_destroyed` event does with the default attribute names: the given strategy,
    /// else `cancel` when there is a soft-delete column.
    pub(crate) fn strategy(&self) -> Strategy {
        match (&self.strategy, self.soft_delete_field()) {
            (Some((strategy, _)), _) => *strategy,
            (None, Some(_)) => Strategy::Cancel,
            (None, None) => Strategy::Destroy,
        }
    }
}

/// `cancel = set(column = "status", value = "cancelled")`: the row is kept and the column
/// set to the value.
pub(crate) struct Cancel {
    pub(crate) column: Name,
    pub(crate) value: CancelValue,
}

/// A value `cancel = set(...)` writes.
pub(crate) enum CancelValue {
    Text(String),
    Integer(i64),
    Bool(bool),
}

/// A replica column's field.
pub(crate) struct Field {
    pub(crate) ident: Ident,
    pub(crate) column: Name,
    pub(crate) ty: Type,
    /// `#[consume(from = "attribute")]`.
    pub(crate) from: Option<LitStr>,
    /// Roles this field's `#[consume(...)]` names it for (`synced_updated_at`, …), each with
    /// the span of its key.
    pub(crate) roles: Vec<(Symbol, Span)>,
}

#[derive(Copy, Clone, PartialEq, Eq)]
pub(crate) enum Strategy {
    Cancel,
    Destroy,
}
