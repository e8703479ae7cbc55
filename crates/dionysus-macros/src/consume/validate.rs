//! Rules across a replica struct's settings and fields: the required keys, table and
//! columns are there, settings that name a field name one, `strategy = "cancel"` has a
//! soft-delete column. Every broken rule is recorded; which field types can hold payload
//! values is for the compiler (see `expand`).

use super::ast::{Replica, Strategy};
use crate::attr::Name;
use crate::ctxt::Ctxt;
use crate::suggest;
use crate::symbol::{Symbol, SOFT_DELETE, SYNCED_DATA};

/// The columns every replica has, with the field that adds one and what it holds.
const REQUIRED: [(&str, &str, &str); 2] = [
    ("synced_id", "i64", "the source record's id"),
    ("synced_updated_at", "Option<DateTime<Utc>>", "the source record's updated_at, compared by the timestamp guard"),
];

pub(crate) fn check(cx: &Ctxt, replica: &Replica) {
    let ident = &replica.ident;
    if !replica.generics.params.is_empty() {
        cx.error_spanned_by(&replica.generics, "a replica struct cannot have generic parameters");
    }
    for (column, ty, meaning) in REQUIRED {
        if replica.field(column).is_none() {
            cx.error_spanned_by(
                ident,
                format!(
                    "replica struct `{ident}` has no `{column}` field\nhelp: add `pub {column}: {ty},` ({meaning})"
                ),
            );
        }
    }
    if let Some(name) = &replica.soft_delete {
        check_field(cx, replica, SOFT_DELETE, name);
    }
    if let Some(name) = &replica.synced_data {
        check_field(cx, replica, SYNCED_DATA, name);
    }
    if let (Some((Strategy::Cancel, lit)), None) = (&replica.strategy, &replica.soft_delete) {
        cx.error_spanned_by(
            lit,
            "strategy \"cancel\" sets the soft-delete column; add `soft_delete = \"synced_canceled_at\"`",
        );
    }

    let missing: Vec<&str> = [("`topic`", replica.topic.is_none()), ("`model`", replica.model.is_none())]
        .into_iter()
        .filter_map(|(key, missing)| missing.then_some(key))
        .collect();
    if !missing.is_empty() && replica.consume_complete {
        cx.syn_error(syn::Error::new(
            replica.consume_span.unwrap_or_else(|| ident.span()),
            format!(
                "missing {} in `#[consume(...)]`\nhelp: the correct format looks like \
                 `#[consume(topic = \"v3_rentals\", model = \"Rental\")]`{}",
                missing.join(" and "),
                if replica.consume_span.is_some() { "" } else { " above the struct" }
            ),
        ));
    }
    if !replica.table_given {
        cx.error_spanned_by(
            ident,
            "missing `#[diesel(table_name = ...)]`: the replica table is the diesel table of the struct",
        );
    }
}

/// Records an error with a hint when `name` is not a column field of the replica.
fn check_field(cx: &Ctxt, replica: &Replica, key: Symbol, name: &Name) {
    if replica.field(&name.value).is_some() {
        return;
    }
    let columns = replica.fields.iter().map(|field| field.column.value.as_str());
    cx.syn_error(syn::Error::new(
        name.span,
        format!(
            "`{key}` names `{}`, which is not a column field of `{}`{}",
            name.value,
            replica.ident,
            suggest::did_you_mean(&name.value, columns)
        ),
    ));
}
