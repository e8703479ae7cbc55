//! Rules across a publishable model's fields and attributes: names that refer to fields
//! exist (with a hint and the list of fields), the primary key is one column, a topic is
//! published once, options that exclude each other are not combined, the fields fit the
//! Avro schema a publication names. Every broken rule is
//! recorded; what needs the type system is emitted by `expand` as code instead.

use std::collections::BTreeSet;

use quote::ToTokens;

use super::ast::{Model, PartitionKey, SoftDelete};
use crate::attr::Name;
use crate::avro::{self, Direction, Member};
use crate::ctxt::Ctxt;
use crate::suggest;
use crate::symbol::{Symbol, PARTITION_KEY, SOFT_DELETE, VIA};

pub(crate) fn check(cx: &Ctxt, model: &Model) {
    let ident = &model.ident;
    if !model.generics.params.is_empty() {
        cx.error_spanned_by(&model.generics, "`#[derive(Publishable)]` does not support generic models");
    }
    let key = &model.primary_key;
    let key_tokens = key.tokens.clone().unwrap_or_else(|| ident.to_token_stream());
    match key.columns.as_slice() {
        [column] if model.field(&column.value).is_none() => cx.error_spanned_by(
            key_tokens,
            format!(
                "`{ident}` has no field for its primary key `{}`; dionysus publishes models with a single-column \
                 primary key (name it with `#[diesel(primary_key(column))]`)",
                column.value
            ),
        ),
        [_] => {}
        _ => cx.error_spanned_by(
            key_tokens,
            format!("`{ident}` has a composite primary key; dionysus publishes models with a single-column key"),
        ),
    }
    if let SoftDelete::Column(column) = &model.soft_delete {
        check_field(cx, model, SOFT_DELETE, column);
    }

    let mut topics = BTreeSet::new();
    for publication in &model.publications {
        if let PartitionKey::Field(name) = &publication.partition_key {
            check_field(cx, model, PARTITION_KEY, name);
        }
        if let (PartitionKey::Resolver(_), Some(span)) = (&publication.partition_key, publication.partition_key_to_i) {
            cx.syn_error(syn::Error::new(
                span,
                "`partition_key_to_i` applies the gem's `to_i` to a field; `partition_key_with` already computes the \
                 key, so remove one of them",
            ));
        }
        for observe in &publication.observe {
            if let Some(via) = &observe.via {
                check_field(cx, model, VIA, via);
            }
        }
        if let Some(schema) = &publication.schema {
            let members: Vec<Member<'_>> =
                model.fields.iter().map(|field| Member { name: &field.column, ty: &field.ty }).collect();
            avro::check(cx, schema, &ident.to_string(), &members, Direction::Write);
        }
        let identity = publication.topic.identity();
        if !topics.insert(identity.clone()) {
            cx.error_spanned_by(
                publication.topic.tokens(),
                format!(
                    "`{ident}` is published on `{identity}` twice; one `#[publish(...)]` per topic (merge their \
                     `with(...)` and `observe(...)`)"
                ),
            );
        }
    }
}

/// Records an error listing the model's fields when `name` is not one of its columns.
fn check_field(cx: &Ctxt, model: &Model, key: Symbol, name: &Name) {
    if model.field(&name.value).is_some() {
        return;
    }
    let columns: Vec<&str> = model.fields.iter().map(|field| field.column.as_str()).collect();
    cx.syn_error(syn::Error::new(
        name.span,
        format!(
            "unknown field `{}` in `{key}`{}\n`{}` has: {}",
            name.value,
            suggest::did_you_mean(&name.value, columns.iter().copied()),
            model.ident,
            columns.join(", ")
        ),
    ));
}
