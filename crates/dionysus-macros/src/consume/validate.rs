//! Rules across a replica struct's settings and fields: the required keys and table are
//! there, settings that name a field (attribute roles, `cancel = set(column = …)`) name one,
//! one destroy strategy at most. Every broken rule is recorded; which field types can hold
//! payload values is for the compiler (see `expand`), and roles left open (resolved against
//! the configured names, C-11) are checked when the consumer is built.

use super::ast::{Field, Replica};
use crate::attr::Name;
use crate::avro::{self, Direction, Member};
use crate::ctxt::Ctxt;
use crate::suggest;
use crate::symbol::{Symbol, CANCEL, SOFT_DELETE, SYNCED_CREATED_AT, SYNCED_DATA, SYNCED_ID, SYNCED_UPDATED_AT};

pub(crate) fn check(cx: &Ctxt, replica: &Replica) {
    let ident = &replica.ident;
    if !replica.generics.params.is_empty() {
        cx.error_spanned_by(&replica.generics, "a replica struct cannot have generic parameters");
    }
    // Roles left open are resolved against the configured names when the consumer is
    // built, which also reports a missing synced id column.
    let roles = [
        (SYNCED_ID, &replica.synced_id),
        (SYNCED_CREATED_AT, &replica.synced_created_at),
        (SYNCED_UPDATED_AT, &replica.synced_updated_at),
        (SOFT_DELETE, &replica.soft_delete),
        (SYNCED_DATA, &replica.synced_data),
    ];
    for (key, name) in roles {
        if let Some(name) = name {
            check_field(cx, replica, key, name);
        }
    }
    crate::cascade::check_duplicates(cx, &replica.cascades);
    if let Some(cancel) = &replica.cancel {
        check_field(cx, replica, CANCEL, &cancel.column);
        if let Some((_, lit)) = &replica.strategy {
            cx.error_spanned_by(lit, "`cancel = set(...)` is the destroy strategy already; remove `strategy`");
        }
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
    if let Some(schema) = &replica.schema {
        let sources: Vec<String> = replica.fields.iter().map(|field| source(replica, field)).collect();
        let members: Vec<Member<'_>> = replica
            .fields
            .iter()
            .zip(&sources)
            .map(|(field, name)| Member { name: name.as_str(), ty: &field.ty })
            .collect();
        avro::check(cx, schema, &ident.to_string(), &members, Direction::Read);
    }
    if !replica.table_given {
        cx.error_spanned_by(
            ident,
            "missing `#[diesel(table_name = ...)]`: the replica table is the diesel table of the struct",
        );
    }
}

/// The record field a column is read from, with the default attribute names: `from = "…"`,
/// the source's `id`, `created_at` and `updated_at` for the synced roles, else the column's
/// own name.
fn source(replica: &Replica, field: &Field) -> String {
    if let Some(from) = &field.from {
        return from.value();
    }
    let is = |role: Option<&Field>| role.is_some_and(|role| role.column.value == field.column.value);
    if is(replica.role(replica.synced_id.as_ref(), "synced_id")) {
        "id".to_owned()
    } else if is(replica.role(replica.synced_created_at.as_ref(), "synced_created_at")) {
        "created_at".to_owned()
    } else if is(replica.role(replica.synced_updated_at.as_ref(), "synced_updated_at")) {
        "updated_at".to_owned()
    } else {
        field.column.value.clone()
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
