//! The typed model of a `#[derive(Consume)]` as written, keeping the original syn nodes and
//! spans. Settings that name fields are kept as written; `validate` checks them and `expand`
//! trusts them.

use proc_macro2::Span;
use syn::{Generics, Ident, LitStr, Path, Type};

use crate::attr::Name;

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
    pub(crate) soft_delete: Option<Name>,
    pub(crate) strategy: Option<(Strategy, LitStr)>,
    /// `synced_data = field`, when given.
    pub(crate) synced_data: Option<Name>,
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

    /// What a `_destroyed` event does: the given strategy, else `cancel` when there is a
    /// soft-delete column.
    pub(crate) fn strategy(&self) -> Strategy {
        match (&self.strategy, &self.soft_delete) {
            (Some((strategy, _)), _) => *strategy,
            (None, Some(_)) => Strategy::Cancel,
            (None, None) => Strategy::Destroy,
        }
    }
}

/// A replica column's field.
pub(crate) struct Field {
    pub(crate) ident: Ident,
    pub(crate) column: Name,
    pub(crate) ty: Type,
    /// `#[consume(from = "attribute")]`.
    pub(crate) from: Option<LitStr>,
}

#[derive(Copy, Clone, PartialEq, Eq)]
pub(crate) enum Strategy {
    Cancel,
    Destroy,
}
