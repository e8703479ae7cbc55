//! Reading a `#[derive(Consume)]` input into the [`Replica`]: the struct's `#[consume(...)]`
//! and diesel settings and each field's `#[consume(...)]` and column. Each attribute's own
//! rules (known keys, value forms, `from` with `skip`) are checked here, every mistake
//! recorded; rules across fields are `validate`'s.

use quote::ToTokens;
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Expr, Fields, Lit};

use super::ast::{Cancel, CancelValue, Field, Replica, Strategy};
use crate::attr::{self, Attr, Name};
use crate::ctxt::Ctxt;
use crate::diesel;
use crate::symbol::*;

const STRUCT_KEYS: &[Symbol] = &[
    TOPIC,
    MODEL,
    SYNCED_ID,
    SYNCED_CREATED_AT,
    SYNCED_UPDATED_AT,
    SOFT_DELETE,
    SYNCED_DATA,
    STRATEGY,
    CANCEL,
    SCHEMA,
    SCHEMA_DIR,
    CASCADE,
];
/// The attribute roles a column can be named for (C-11), by a struct key or a field flag.
const ROLES: [Symbol; 5] = [SYNCED_ID, SYNCED_CREATED_AT, SYNCED_UPDATED_AT, SOFT_DELETE, SYNCED_DATA];
const FIELD_KEYS: &[Symbol] = &[FROM, SKIP, SYNCED_ID, SYNCED_CREATED_AT, SYNCED_UPDATED_AT, SOFT_DELETE, SYNCED_DATA];
const CANCEL_EXAMPLE: &str = r#"cancel = set(column = "status", value = "cancelled")"#;

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
    let mut schema = Attr::none(cx, SCHEMA);
    let mut schema_dir = Attr::none(cx, SCHEMA_DIR);
    let mut roles = ROLES.map(|role| Attr::none(cx, role));
    let mut strategy = Attr::none(cx, STRATEGY);
    let mut cancel = Attr::none(cx, CANCEL);
    let mut cascades = Vec::new();
    let consume_complete = attr::each_in_attrs(cx, &input.attrs, CONSUME, |meta| {
        if meta.path == TOPIC {
            topic.set_opt(&meta.path, attr::string(cx, TOPIC, &meta, r#"topic = "v3_rentals""#)?);
        } else if meta.path == MODEL {
            model.set_opt(&meta.path, attr::string(cx, MODEL, &meta, r#"model = "Rental""#)?);
        } else if meta.path == SCHEMA {
            schema.set_opt(&meta.path, attr::string(cx, SCHEMA, &meta, r#"schema = "com.example.Rental""#)?);
        } else if meta.path == SCHEMA_DIR {
            schema_dir.set_opt(&meta.path, attr::string(cx, SCHEMA_DIR, &meta, r#"schema_dir = "avro""#)?);
        } else if let Some(index) = ROLES.iter().position(|role| meta.path == *role) {
            let example = match ROLES[index] {
                SOFT_DELETE => r#"soft_delete = "synced_canceled_at""#,
                SYNCED_DATA => r#"synced_data = "synced_data""#,
                SYNCED_ID => r#"synced_id = "remote_id""#,
                _ => r#"synced_updated_at = "remote_updated_at""#,
            };
            roles[index].set_opt(&meta.path, attr::name(cx, ROLES[index], &meta, example)?);
        } else if meta.path == STRATEGY {
            let value = attr::string(cx, STRATEGY, &meta, r#"strategy = "destroy""#)?;
            strategy.set_opt(&meta.path, value.and_then(|lit| read_strategy(cx, lit)));
        } else if meta.path == CASCADE {
            cascades.extend(crate::cascade::parse(cx, &meta)?);
        } else if meta.path == CANCEL {
            let value = attr::value(cx, CANCEL, &meta, CANCEL_EXAMPLE)?;
            cancel.set_opt(&meta.path, value.and_then(|expr| read_cancel(cx, &expr)));
        } else {
            attr::unknown(cx, &meta, "`#[consume(...)]`", STRUCT_KEYS)?;
        }
        Ok(())
    });

    let fields: Vec<Field> = named.named.iter().filter_map(|field| read_field(cx, field)).collect();
    for field in &fields {
        for (role, span) in &field.roles {
            if let Some(index) = ROLES.iter().position(|candidate| candidate == role) {
                let name = Name { value: field.column.value.clone(), span: *span };
                roles[index].set(syn::Ident::new(role.0, *span), name);
            }
        }
    }
    let [synced_id, synced_created_at, synced_updated_at, soft_delete, synced_data] = roles.map(Attr::get);
    let diesel = diesel::container(cx, &input.attrs);
    Some(Replica {
        ident: input.ident.clone(),
        generics: input.generics.clone(),
        table: diesel.table,
        table_given: diesel.table_given,
        topic: topic.get(),
        model: model.get(),
        schema: crate::avro::SchemaRef::from_keys(cx, schema.get(), schema_dir.get()),
        synced_id,
        synced_created_at,
        synced_updated_at,
        soft_delete,
        synced_data,
        strategy: strategy.get(),
        cancel: cancel.get(),
        cascades,
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

/// `set(column = "status", value = "cancelled")`; the value a string, an integer or a
/// boolean.
fn read_cancel(cx: &Ctxt, expr: &Expr) -> Option<Cancel> {
    let wrong = |at: &dyn ToTokens| {
        cx.error_spanned_by(at, format!("expected `{CANCEL_EXAMPLE}` (the value a string, an integer or a boolean)"));
        None
    };
    let Expr::Call(call) = expr else { return wrong(expr) };
    if !matches!(&*call.func, Expr::Path(path) if path.path.is_ident("set")) {
        return wrong(&call.func);
    }
    let mut column = None;
    let mut value = None;
    for arg in &call.args {
        let Expr::Assign(assign) = arg else { return wrong(arg) };
        let Expr::Path(key) = &*assign.left else { return wrong(&assign.left) };
        if key.path.is_ident("column") {
            let Some(name) = attr::expr_name(&assign.right) else { return wrong(&assign.right) };
            column = Some(name);
        } else if key.path.is_ident("value") {
            let read = match &*assign.right {
                Expr::Unary(syn::ExprUnary { op: syn::UnOp::Neg(_), expr, .. }) => match attr::lit(expr) {
                    Some(Lit::Int(int)) => int.base10_parse::<i64>().ok().map(|number| CancelValue::Integer(-number)),
                    _ => None,
                },
                other => match attr::lit(other) {
                    Some(Lit::Str(text)) => Some(CancelValue::Text(text.value())),
                    Some(Lit::Int(int)) => int.base10_parse::<i64>().ok().map(CancelValue::Integer),
                    Some(Lit::Bool(flag)) => Some(CancelValue::Bool(flag.value)),
                    _ => None,
                },
            };
            let Some(read) = read else { return wrong(&assign.right) };
            value = Some(read);
        } else {
            return wrong(&assign.left);
        }
    }
    match (column, value) {
        (Some(column), Some(value)) => Some(Cancel { column, value }),
        _ => wrong(call),
    }
}

/// A field the consumer writes; `None` for a skipped one.
fn read_field(cx: &Ctxt, field: &syn::Field) -> Option<Field> {
    let column = diesel::column(cx, field)?;
    let mut from = Attr::none(cx, FROM);
    let mut skip = Attr::none(cx, SKIP);
    let mut roles = Vec::new();
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
        } else if let Some(role) = ROLES.iter().find(|role| meta.path == **role) {
            if attr::flag(cx, *role, &meta)? == Some(true) {
                roles.push((*role, meta.path.span()));
            }
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
        for (role, span) in &roles {
            cx.syn_error(syn::Error::new(*span, format!("a skipped field is no column; it cannot be `{role}`")));
        }
        return None;
    }
    Some(Field { ident: field.ident.clone()?, column, ty: field.ty.clone(), from, roles })
}
