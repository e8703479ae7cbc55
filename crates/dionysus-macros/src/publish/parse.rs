//! Reading a `#[derive(Publishable)]` input: the struct's fields and diesel attributes, every
//! `#[publish(...)]` and the optional `#[publishable(...)]`, with every mistake recorded.

use std::collections::BTreeMap;

use proc_macro2::Span;
use quote::ToTokens;
use syn::meta::ParseNestedMeta;
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{Attribute, Data, DeriveInput, Fields, Ident, LitStr, Path, Token};

use super::ast::{Field, Model, Observe, PartitionKey, Publication, SoftDelete, TopicRef};
use crate::attr::Attr;
use crate::ctxt::Ctxt;
use crate::suggest;
use crate::symbol::*;

const PUBLISH_KEYS: &[&str] =
    &[TOPIC.0, PARTITION_KEY.0, PARTITION_KEY_WITH.0, WITH.0, OBSERVE.0, SERIALIZER.0, MODEL_NAME.0];
const PUBLISHABLE_KEYS: &[&str] = &[MODEL_NAME.0, SOFT_DELETE.0, PUBLISH_UPDATES_AFTER_SOFT_DELETE.0];
const OBSERVE_KEYS: &[&str] = &[COLUMNS.0, VIA.0];

pub(crate) fn model(cx: &Ctxt, input: &DeriveInput) -> Option<Model> {
    if !input.generics.params.is_empty() {
        cx.error_spanned_by(&input.generics, "`#[derive(Publishable)]` does not support generic models");
    }
    let fields = match &input.data {
        Data::Struct(data) => match &data.fields {
            Fields::Named(named) => named.named.iter().filter_map(|field| read_field(cx, field)).collect::<Vec<_>>(),
            _ => {
                cx.error_spanned_by(
                    &input.ident,
                    "`#[derive(Publishable)]` needs a struct with named fields (a diesel model)",
                );
                return None;
            }
        },
        _ => {
            cx.error_spanned_by(&input.ident, "`#[derive(Publishable)]` goes on a struct (a diesel model)");
            return None;
        }
    };

    let diesel = read_diesel(cx, &input.attrs, &input.ident);
    let primary_key_column = diesel.primary_key.clone().unwrap_or_else(|| "id".to_owned());
    let primary_key = fields.iter().find(|field| field.column == primary_key_column).cloned();
    if primary_key.is_none() {
        let span = diesel.primary_key_span.unwrap_or_else(|| input.ident.span());
        cx.syn_error(syn::Error::new(
            span,
            format!(
                "`{}` has no field for its primary key `{primary_key_column}`; dionysus publishes models with a \
                 single-column primary key (name it with `#[diesel(primary_key(column))]`)",
                input.ident
            ),
        ));
    }

    let mut model_name = Attr::none(cx, MODEL_NAME);
    let mut soft_delete = Attr::none(cx, SOFT_DELETE);
    let mut publish_updates = Attr::none(cx, PUBLISH_UPDATES_AFTER_SOFT_DELETE);
    let mut publishable_seen = false;
    let mut publications = Vec::new();

    for attr in &input.attrs {
        if attr.path() == &PUBLISHABLE {
            if publishable_seen {
                cx.error_spanned_by(attr, "duplicate `#[publishable(...)]`: give model-level settings once");
            }
            publishable_seen = true;
            read_publishable(cx, attr, &fields, &input.ident, &mut model_name, &mut soft_delete, &mut publish_updates);
        } else if attr.path() == &PUBLISH {
            if let Some(publication) = read_publish(cx, attr, &fields, &input.ident, &mut model_name) {
                publications.push(publication);
            }
        }
    }

    let mut topics: BTreeMap<String, Span> = BTreeMap::new();
    for publication in &publications {
        let identity = publication.topic.identity();
        if topics.insert(identity.clone(), publication.span).is_some() {
            let span = match &publication.topic {
                TopicRef::Name(name) => name.span(),
                TopicRef::Type(path) => path.span(),
            };
            cx.syn_error(syn::Error::new(
                span,
                format!(
                    "`{}` is published on `{identity}` twice; one `#[publish(...)]` per topic (merge their `with(...)` and `observe(...)`)",
                    input.ident
                ),
            ));
        }
    }

    Some(Model {
        model_name: model_name.get().unwrap_or_else(|| input.ident.to_string()),
        ident: input.ident.clone(),
        table: diesel.table.unwrap_or_else(|| default_table(&input.ident)),
        primary_key: primary_key?,
        fields,
        soft_delete: soft_delete.get().unwrap_or(SoftDelete::Configured),
        publish_updates_after_soft_delete: publish_updates.get().unwrap_or(false),
        publications,
    })
}

fn read_field(cx: &Ctxt, field: &syn::Field) -> Option<Field> {
    let ident = field.ident.clone()?;
    let mut column = ident.to_string().trim_start_matches("r#").to_owned();
    for attr in field.attrs.iter().filter(|attr| attr.path().is_ident("diesel")) {
        let result = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("column_name") {
                let value = meta.value()?;
                column = if value.peek(LitStr) {
                    value.parse::<LitStr>()?.value()
                } else {
                    value.parse::<Ident>()?.to_string().trim_start_matches("r#").to_owned()
                };
                Ok(())
            } else {
                skip_meta(&meta)
            }
        });
        if let Err(error) = result {
            cx.syn_error(error);
        }
    }
    Some(Field { ident, column, ty: field.ty.clone() })
}

/// Consumes the value of a meta item we do not interpret (`= expr` or `(...)`).
fn skip_meta(meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        meta.value()?.parse::<syn::Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        let content;
        syn::parenthesized!(content in meta.input);
        content.parse::<proc_macro2::TokenStream>()?;
    }
    Ok(())
}

#[derive(Default)]
struct DieselAttrs {
    table: Option<Path>,
    primary_key: Option<String>,
    primary_key_span: Option<Span>,
}

fn read_diesel(cx: &Ctxt, attrs: &[Attribute], ident: &Ident) -> DieselAttrs {
    let mut out = DieselAttrs::default();
    for attr in attrs.iter().filter(|attr| attr.path().is_ident("diesel")) {
        let result = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("table_name") {
                out.table = Some(meta.value()?.parse::<Path>()?);
                Ok(())
            } else if meta.path.is_ident("primary_key") {
                let content;
                syn::parenthesized!(content in meta.input);
                let columns = content.parse_terminated(Ident::parse_any_ident, Token![,])?;
                out.primary_key_span = Some(columns.span());
                if columns.len() == 1 {
                    out.primary_key = columns.first().map(|c| c.to_string().trim_start_matches("r#").to_owned());
                } else {
                    cx.error_spanned_by(
                        &columns,
                        format!(
                            "`{ident}` has a composite primary key; dionysus publishes models with a single-column key"
                        ),
                    );
                }
                Ok(())
            } else {
                skip_meta(&meta)
            }
        });
        if let Err(error) = result {
            cx.syn_error(error);
        }
    }
    out
}

trait ParseAnyIdent {
    fn parse_any_ident(input: ParseStream<'_>) -> syn::Result<Ident>;
}

impl ParseAnyIdent for Ident {
    fn parse_any_ident(input: ParseStream<'_>) -> syn::Result<Ident> {
        syn::ext::IdentExt::parse_any(input)
    }
}

/// diesel's default table name: the struct name in snake case plus `s`.
fn default_table(ident: &Ident) -> Path {
    let mut snake = String::new();
    for (i, c) in ident.to_string().chars().enumerate() {
        if c.is_uppercase() {
            if i > 0 {
                snake.push('_');
            }
            snake.extend(c.to_lowercase());
        } else {
            snake.push(c);
        }
    }
    snake.push('s');
    Path::from(Ident::new(&snake, ident.span()))
}

fn field_list(fields: &[Field]) -> String {
    fields.iter().map(|field| field.column.as_str()).collect::<Vec<_>>().join(", ")
}

/// Checks that `name` is a column of the model; records an error listing the columns if not.
fn check_column(cx: &Ctxt, fields: &[Field], model: &Ident, key: Symbol, name: &str, span: Span) -> bool {
    if fields.iter().any(|field| field.column == name) {
        return true;
    }
    let mut message = format!("unknown field `{name}` in `{key}`");
    if let Some(hint) = suggest::closest(name, fields.iter().map(|field| field.column.as_str())) {
        message.push_str(&format!("; did you mean `{hint}`?"));
    }
    message.push_str(&format!("\n`{model}` has: {}", field_list(fields)));
    cx.syn_error(syn::Error::new(span, message));
    false
}

fn read_publishable(
    cx: &Ctxt,
    attr: &Attribute,
    fields: &[Field],
    model: &Ident,
    model_name: &mut Attr<'_, String>,
    soft_delete: &mut Attr<'_, SoftDelete>,
    publish_updates: &mut Attr<'_, bool>,
) {
    let result = attr.parse_nested_meta(|meta| {
        let path = meta.path.clone();
        if path == MODEL_NAME {
            model_name.set(&path, parse_model_name(cx, &meta)?);
        } else if path == SOFT_DELETE {
            let value = meta.value()?;
            if value.peek(syn::LitBool) {
                let flag = value.parse::<syn::LitBool>()?;
                if flag.value {
                    cx.error_spanned_by(&flag, "`soft_delete` takes a column name, or `false` to disable soft delete");
                } else {
                    soft_delete.set(&path, SoftDelete::Disabled);
                }
            } else {
                let (column, span) = parse_name(value)?;
                if check_column(cx, fields, model, SOFT_DELETE, &column, span) {
                    soft_delete.set(&path, SoftDelete::Column(column));
                }
            }
        } else if path == PUBLISH_UPDATES_AFTER_SOFT_DELETE {
            let flag = if meta.input.peek(Token![=]) { meta.value()?.parse::<syn::LitBool>()?.value } else { true };
            publish_updates.set(&path, flag);
        } else {
            let key = path.to_token_stream().to_string();
            cx.syn_error(syn::Error::new(
                path.span(),
                suggest::unknown_key_message("`#[publishable(...)]`", &key, PUBLISHABLE_KEYS),
            ));
            skip_meta(&meta)?;
        }
        Ok(())
    });
    if let Err(error) = result {
        cx.syn_error(error);
    }
}

fn parse_model_name(cx: &Ctxt, meta: &ParseNestedMeta<'_>) -> syn::Result<String> {
    let value = meta.value()?;
    let lit = match value.parse::<LitStr>() {
        Ok(lit) => lit,
        Err(error) => {
            return Err(syn::Error::new(
                error.span(),
                "expected a string for `model_name`, e.g. `model_name = \"Bookings::Fee\"`",
            ))
        }
    };
    let name = lit.value();
    if name.is_empty() || name.contains(char::is_whitespace) {
        cx.error_spanned_by(&lit, "`model_name` must be a class-like name without spaces, e.g. \"Bookings::Fee\"");
    }
    Ok(name)
}

/// `"name"` or `name`.
fn parse_name(input: ParseStream<'_>) -> syn::Result<(String, Span)> {
    if input.peek(LitStr) {
        let lit = input.parse::<LitStr>()?;
        Ok((lit.value(), lit.span()))
    } else if input.peek(Ident) {
        let ident = input.parse::<Ident>()?;
        Ok((ident.to_string(), ident.span()))
    } else {
        Err(input.error("expected a field name, e.g. `\"account_id\"`"))
    }
}

fn read_publish(
    cx: &Ctxt,
    attr: &Attribute,
    fields: &[Field],
    model: &Ident,
    model_name: &mut Attr<'_, String>,
) -> Option<Publication> {
    let mut topic = Attr::none(cx, TOPIC);
    let mut partition_key = Attr::none(cx, PARTITION_KEY);
    let mut with: Vec<Path> = Vec::new();
    let mut with_seen = Attr::none(cx, WITH);
    let mut observe = Vec::new();
    let mut serializer = Attr::none(cx, SERIALIZER);
    let mut topic_given = false;

    let result = attr.parse_nested_meta(|meta| {
        let path = meta.path.clone();
        if path == TOPIC {
            topic_given = true;
            let value = meta.value()?;
            let parsed = if value.peek(LitStr) {
                let lit = value.parse::<LitStr>()?;
                if lit.value().is_empty() {
                    cx.error_spanned_by(&lit, "`topic` cannot be empty");
                }
                TopicRef::Name(lit)
            } else if value.peek(Ident) || value.peek(Token![::]) || value.peek(Token![crate]) {
                TopicRef::Type(value.parse::<Path>()?)
            } else {
                let expr = value.parse::<syn::Expr>()?;
                cx.error_spanned_by(
                    &expr,
                    "expected a topic name or a `#[dionysus::topic]` type for `topic`, e.g. `topic = \"v3_rentals\"` or `topic = topics::Rentals`",
                );
                return Ok(());
            };
            topic.set(&path, parsed);
        } else if path == PARTITION_KEY {
            let value = meta.value()?;
            if value.peek(LitStr) || value.peek(Ident) {
                let (name, span) = parse_name(value)?;
                if check_column(cx, fields, model, PARTITION_KEY, &name, span) {
                    partition_key.set(&path, PartitionKey::Attribute(name));
                }
            } else {
                let expr = value.parse::<syn::Expr>()?;
                cx.error_spanned_by(
                    &expr,
                    "expected a field name for `partition_key`, e.g. `partition_key = \"account_id\"` (use `partition_key_with = path::to::fn` for a function)",
                );
            }
        } else if path == PARTITION_KEY_WITH {
            let value = meta.value()?;
            match value.fork().parse::<Path>() {
                Ok(_) => partition_key.set(&path, PartitionKey::Resolver(value.parse::<Path>()?)),
                Err(_) => {
                    let expr = value.parse::<syn::Expr>()?;
                    cx.error_spanned_by(
                        &expr,
                        "expected a path to a function `fn(&Model) -> Option<String>` for `partition_key_with`",
                    );
                }
            }
        } else if path == WITH {
            with_seen.set(&path, ());
            if !meta.input.peek(syn::token::Paren) {
                return Err(meta.error("expected a list of models, e.g. `with(BookingsFee, BookingsTax)`"));
            }
            let content;
            syn::parenthesized!(content in meta.input);
            let models = content.parse_terminated(Path::parse, Token![,])?;
            for dependency in models {
                if with.iter().any(|known| known == &dependency) {
                    cx.error_spanned_by(&dependency, "this model is already listed in `with(...)`");
                } else {
                    with.push(dependency);
                }
            }
        } else if path == OBSERVE {
            if !meta.input.peek(syn::token::Paren) {
                return Err(meta.error(
                    "expected `observe(Model, columns(column, …))`, e.g. `observe(Account, columns(default_check_in_time))`",
                ));
            }
            let content;
            syn::parenthesized!(content in meta.input);
            if let Some(observer) = read_observe(cx, &content, fields, model)? {
                observe.push(observer);
            }
        } else if path == SERIALIZER {
            let value = meta.value()?;
            serializer.set(&path, value.parse::<Path>()?);
        } else if path == MODEL_NAME {
            let name = parse_model_name(cx, &meta)?;
            model_name.set(&path, name);
        } else {
            let key = path.to_token_stream().to_string().replace(' ', "");
            cx.syn_error(syn::Error::new(path.span(), suggest::unknown_key_message("`#[publish(...)]`", &key, PUBLISH_KEYS)));
            skip_meta(&meta)?;
        }
        Ok(())
    });
    if let Err(error) = result {
        cx.syn_error(error);
        return None;
    }
    let Some(topic) = topic.get() else {
        if topic_given {
            // Its value was wrong; that error is already recorded.
            return None;
        }
        cx.error_spanned_by(
            attr,
            "missing `topic` in `#[publish(...)]`\nhelp: the correct format looks like `#[publish(topic = \"v3_rentals\")]`",
        );
        return None;
    };
    Some(Publication {
        topic,
        partition_key: partition_key.get().unwrap_or(PartitionKey::Inherit),
        with,
        observe,
        serializer: serializer.get(),
        span: attr.path().span(),
    })
}

/// `Model, columns(a, b), via = "column"`.
fn read_observe(cx: &Ctxt, input: ParseStream<'_>, fields: &[Field], model: &Ident) -> syn::Result<Option<Observe>> {
    let observed: Path = input.parse()?;
    let mut columns: Vec<Ident> = Vec::new();
    let mut columns_seen = false;
    let mut via = None;
    while !input.is_empty() {
        input.parse::<Token![,]>()?;
        if input.is_empty() {
            break;
        }
        let key: Ident = input.parse()?;
        if key == COLUMNS {
            columns_seen = true;
            let content;
            syn::parenthesized!(content in input);
            let list = content.parse_terminated(Ident::parse_any_ident, Token![,])?;
            if list.is_empty() {
                cx.error_spanned_by(&key, "`columns(...)` needs at least one column");
            }
            columns.extend(list);
        } else if key == VIA {
            input.parse::<Token![=]>()?;
            let (name, span) = parse_name(input)?;
            if check_column(cx, fields, model, VIA, &name, span) {
                via = Some(name);
            }
        } else {
            cx.syn_error(syn::Error::new(
                key.span(),
                suggest::unknown_key_message("`observe(...)`", &key.to_string(), OBSERVE_KEYS),
            ));
            if input.peek(Token![=]) {
                input.parse::<Token![=]>()?;
                input.parse::<syn::Expr>()?;
            } else if input.peek(syn::token::Paren) {
                let content;
                syn::parenthesized!(content in input);
                content.parse::<proc_macro2::TokenStream>()?;
            }
        }
    }
    if !columns_seen {
        cx.error_spanned_by(
            &observed,
            "`observe(...)` needs the observed columns, e.g. `observe(Account, columns(default_check_in_time))`",
        );
        return Ok(None);
    }
    Ok(Some(Observe { model: observed, columns, via }))
}
