//! Reading a `#[derive(Consume)]` input into the [`Replica`]: the struct's `#[consume(...)]`
//! and diesel settings and each field's `#[consume(...)]` and column. Each attribute's own
//! rules (known keys, value forms, `from` with `skip`) are checked here, every mistake
//! recorded; rules across fields are `validate`'s.

use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields};

use super::ast::{Field, Replica, Strategy};
use crate::attr::{self, Attr};
use crate::ctxt::Ctxt;
use crate::diesel;
use crate::symbol::*;

const STRUCT_KEYS: &[Symbol] = &[TOPIC, MODEL, SOFT_DELETE, STRATEGY, SYNCED_DATA];
const FIELD_KEYS: &[Symbol] = &[FROM, SKIP];

pub(crate) fn replica(cx: &Ctxt, input: &DeriveInput) -> Option<Replica> {
    let named = match &input.data {
        Data::Struct(data) => match &data.fields {
            Fields::Named(named) => Some(named),
            _ => None,
        },
        _ => None,
    };
    let Some(named) = named else {
        cx.error_spanned_by(
            &input.ident,
            "`#[derive(Consume)]` goes on a struct with named fields, one per replica column",
        );
        return None;
    };

    let mut topic = Attr::none(cx, TOPIC);
    let mut model = Attr::none(cx, MODEL);
    let mut soft_delete = Attr::none(cx, SOFT_DELETE);
    let mut strategy = Attr::none(cx, STRATEGY);
    let mut synced_data = Attr::none(cx, SYNCED_DATA);
    let consume_complete = attr::each_in_attrs(cx, &input.attrs, CONSUME, |meta| {
        if meta.path == TOPIC {
            topic.set_opt(&meta.path, attr::string(cx, TOPIC, &meta, r#"topic = "v3_rentals""#)?);
        } else if meta.path == MODEL {
            model.set_opt(&meta.path, attr::string(cx, MODEL, &meta, r#"model = "Rental""#)?);
        } else if meta.path == SOFT_DELETE {
            let example = r#"soft_delete = "synced_canceled_at""#;
            soft_delete.set_opt(&meta.path, attr::name(cx, SOFT_DELETE, &meta, example)?);
        } else if meta.path == STRATEGY {
            let value = attr::string(cx, STRATEGY, &meta, r#"strategy = "destroy""#)?;
            strategy.set_opt(&meta.path, value.and_then(|lit| read_strategy(cx, lit)));
        } else if meta.path == SYNCED_DATA {
            let example = r#"synced_data = "synced_data""#;
            synced_data.set_opt(&meta.path, attr::name(cx, SYNCED_DATA, &meta, example)?);
        } else {
            attr::unknown(cx, &meta, "`#[consume(...)]`", STRUCT_KEYS)?;
        }
        Ok(())
    });

    let fields = named.named.iter().filter_map(|field| read_field(cx, field)).collect();
    let diesel = diesel::container(cx, &input.attrs);
    Some(Replica {
        ident: input.ident.clone(),
        generics: input.generics.clone(),
        table: diesel.table,
        table_given: diesel.table_given,
        topic: topic.get(),
        model: model.get(),
        soft_delete: soft_delete.get(),
        strategy: strategy.get(),
        synced_data: synced_data.get(),
        consume_complete,
        consume_span: input.attrs.iter().find(|attr| attr.path() == &CONSUME).map(|attr| attr.path().span()),
        fields,
    })
}

/// `"cancel"` or `"destroy"`.
fn read_strategy(cx: &Ctxt, lit: syn::LitStr) -> Option<(Strategy, syn::LitStr)> {
    match lit.value().as_str() {
        "cancel" => Some((Strategy::Cancel, lit)),
        "destroy" => Some((Strategy::Destroy, lit)),
        other => {
            cx.error_spanned_by(
                &lit,
                format!(
                    "unknown strategy `{other}`; expected \"cancel\" (soft delete, the default with `soft_delete`) \
                     or \"destroy\""
                ),
            );
            None
        }
    }
}

/// A field the consumer writes; `None` for a skipped one.
fn read_field(cx: &Ctxt, field: &syn::Field) -> Option<Field> {
    let column = diesel::column(cx, field)?;
    let mut from = Attr::none(cx, FROM);
    let mut skip = Attr::none(cx, SKIP);
    attr::each_in_attrs(cx, &field.attrs, CONSUME, |meta| {
        if meta.path == FROM {
            let value = attr::string(cx, FROM, &meta, r#"from = "daily_price""#)?;
            let value = value.filter(|lit| {
                if lit.value().is_empty() {
                    cx.error_spanned_by(lit, "`from` names the payload attribute and cannot be empty");
                }
                !lit.value().is_empty()
            });
            from.set_opt(&meta.path, value);
        } else if meta.path == SKIP {
            skip.set_opt(&meta.path, attr::flag(cx, SKIP, &meta)?);
        } else {
            attr::unknown(cx, &meta, "`#[consume(...)]` on a field", FIELD_KEYS)?;
        }
        Ok(())
    });
    let from = from.get();
    if skip.get().unwrap_or(false) {
        if let Some(from) = &from {
            cx.error_spanned_by(from, "a skipped field takes no value from the payload; remove `from` or `skip`");
        }
        return None;
    }
    Some(Field { ident: field.ident.clone()?, column, ty: field.ty.clone(), from })
}
