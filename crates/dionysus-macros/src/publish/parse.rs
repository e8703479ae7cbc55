//! Reading a `#[derive(Publishable)]` input into the [`Model`]: the struct's fields and
//! diesel settings, every `#[publish(...)]` and the optional `#[publishable(...)]`. Each
//! attribute's own rules (known keys, value forms, required keys) are checked here, every
//! mistake recorded; rules across fields and attributes are `validate`'s.

use proc_macro2::TokenStream;
use syn::ext::IdentExt;
use syn::meta::ParseNestedMeta;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Attribute, Data, DeriveInput, Expr, Fields, Ident, Lit, Path, Token};

use super::ast::{Field, Model, Observe, PartitionKey, PrimaryKey, Publication, SoftDelete, TopicRef};
use crate::attr::{self, Attr, Name};
use crate::avro::SchemaRef;
use crate::ctxt::Ctxt;
use crate::diesel;
use crate::symbol::*;

const PUBLISH_KEYS: &[Symbol] = &[
    TOPIC,
    PARTITION_KEY,
    PARTITION_KEY_WITH,
    PARTITION_KEY_TO_I,
    WITH,
    OBSERVE,
    SERIALIZER,
    MODEL_NAME,
    SCHEMA,
    SCHEMA_DIR,
    DELAYED,
];
const PUBLISHABLE_KEYS: &[Symbol] = &[MODEL_NAME, SOFT_DELETE, PUBLISH_UPDATES_AFTER_SOFT_DELETE];
const OBSERVE_KEYS: &[Symbol] = &[COLUMNS, VIA];

pub(crate) fn model(cx: &Ctxt, input: &DeriveInput) -> Option<Model> {
    let named = match &input.data {
        Data::Struct(data) => match &data.fields {
            Fields::Named(named) => named,
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
    let fields = named
        .named
        .iter()
        .filter_map(|field| {
            let column = diesel::column(cx, field)?;
            Some(Field { ident: field.ident.clone()?, column: column.value, ty: field.ty.clone() })
        })
        .collect();
    let diesel = diesel::container(cx, &input.attrs);
    let primary_key = match diesel.primary_key {
        Some(key) => PrimaryKey { columns: key.columns, tokens: Some(key.tokens) },
        None => PrimaryKey { columns: vec![Name { value: "id".to_owned(), span: input.ident.span() }], tokens: None },
    };

    let mut model_name = Attr::none(cx, MODEL_NAME);
    let mut soft_delete = Attr::none(cx, SOFT_DELETE);
    let mut publish_updates = Attr::none(cx, PUBLISH_UPDATES_AFTER_SOFT_DELETE);
    let mut publishable_seen = false;
    for attr in input.attrs.iter().filter(|attr| attr.path() == &PUBLISHABLE) {
        if publishable_seen {
            cx.error_spanned_by(attr, "duplicate `#[publishable(...)]`: give model-level settings once");
        }
        publishable_seen = true;
    }
    attr::each_in_attrs(cx, &input.attrs, PUBLISHABLE, |meta| {
        if meta.path == MODEL_NAME {
            model_name.set_opt(&meta.path, read_model_name(cx, &meta)?);
        } else if meta.path == SOFT_DELETE {
            soft_delete.set_opt(&meta.path, read_soft_delete(cx, &meta)?);
        } else if meta.path == PUBLISH_UPDATES_AFTER_SOFT_DELETE {
            publish_updates.set_opt(&meta.path, attr::flag(cx, PUBLISH_UPDATES_AFTER_SOFT_DELETE, &meta)?);
        } else {
            attr::unknown(cx, &meta, "`#[publishable(...)]`", PUBLISHABLE_KEYS)?;
        }
        Ok(())
    });
    let publications = input
        .attrs
        .iter()
        .filter(|attr| attr.path() == &PUBLISH)
        .filter_map(|attr| read_publish(cx, attr, &mut model_name))
        .collect();

    Some(Model {
        model_name: model_name.get().unwrap_or_else(|| input.ident.to_string()),
        ident: input.ident.clone(),
        generics: input.generics.clone(),
        table: diesel.table.unwrap_or_else(|| default_table(&input.ident)),
        primary_key,
        fields,
        soft_delete: soft_delete.get().unwrap_or(SoftDelete::Configured),
        publish_updates_after_soft_delete: publish_updates.get().unwrap_or(false),
        publications,
    })
}

/// diesel's default table name: the struct name in snake case plus `s`.
fn default_table(ident: &Ident) -> Path {
    let mut snake = String::new();
    for (i, c) in ident.unraw().to_string().chars().enumerate() {
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

/// `model_name = "Bookings::Fee"`.
fn read_model_name(cx: &Ctxt, meta: &ParseNestedMeta<'_>) -> syn::Result<Option<String>> {
    let Some(lit) = attr::string(cx, MODEL_NAME, meta, r#"model_name = "Bookings::Fee""#)? else { return Ok(None) };
    let name = lit.value();
    if name.is_empty() || name.contains(char::is_whitespace) {
        cx.error_spanned_by(&lit, "`model_name` must be a class-like name without spaces, e.g. \"Bookings::Fee\"");
        return Ok(None);
    }
    Ok(Some(name))
}

/// `soft_delete = "column"`, `soft_delete = column` or `soft_delete = false`.
fn read_soft_delete(cx: &Ctxt, meta: &ParseNestedMeta<'_>) -> syn::Result<Option<SoftDelete>> {
    let Some(expr) = attr::value(cx, SOFT_DELETE, meta, r#"soft_delete = "canceled_at""#)? else { return Ok(None) };
    if let Some(Lit::Bool(flag)) = attr::lit(&expr) {
        if flag.value {
            cx.error_spanned_by(flag, "`soft_delete` takes a column name, or `false` to disable soft delete");
            return Ok(None);
        }
        return Ok(Some(SoftDelete::Disabled));
    }
    match attr::expr_name(&expr) {
        Some(name) => Ok(Some(SoftDelete::Column(name))),
        None => {
            cx.error_spanned_by(
                &expr,
                "expected a column name or `false` for `soft_delete`, e.g. `soft_delete = \"canceled_at\"`",
            );
            Ok(None)
        }
    }
}

/// One `#[publish(...)]`; `None` when it has no valid topic.
fn read_publish(cx: &Ctxt, attr: &Attribute, model_name: &mut Attr<'_, String>) -> Option<Publication> {
    let mut topic = Attr::none(cx, TOPIC);
    let mut partition_key = Attr::none(cx, PARTITION_KEY);
    let mut partition_key_with = Attr::none(cx, PARTITION_KEY_WITH);
    let mut partition_key_to_i = Attr::none(cx, PARTITION_KEY_TO_I);
    let mut with_seen = Attr::none(cx, WITH);
    let mut with: Vec<Path> = Vec::new();
    let mut observe = Vec::new();
    let mut serializer = Attr::none(cx, SERIALIZER);
    let mut schema = Attr::none(cx, SCHEMA);
    let mut schema_dir = Attr::none(cx, SCHEMA_DIR);
    let mut delayed = Attr::none(cx, DELAYED);
    let mut topic_given = false;

    let complete = attr::each_in_attrs(cx, std::slice::from_ref(attr), PUBLISH, |meta| {
        if meta.path == TOPIC {
            topic_given = true;
            topic.set_opt(&meta.path, read_topic(cx, &meta)?);
        } else if meta.path == PARTITION_KEY {
            partition_key.set_opt(&meta.path, read_partition_key(cx, &meta)?);
        } else if meta.path == PARTITION_KEY_WITH {
            let what = "a function `fn(&Model) -> Option<String>`";
            let path = attr::path(cx, PARTITION_KEY_WITH, &meta, what, "partition_key_with = keys::of_rental")?;
            partition_key_with.set_opt(&meta.path, path.map(|path| (meta.path.span(), path)));
        } else if meta.path == PARTITION_KEY_TO_I {
            if attr::flag(cx, PARTITION_KEY_TO_I, &meta)? == Some(true) {
                partition_key_to_i.set(&meta.path, meta.path.span());
            }
        } else if meta.path == WITH {
            with_seen.set(&meta.path, ());
            for dependency in read_with(&meta)? {
                if with.contains(&dependency) {
                    cx.error_spanned_by(&dependency, "this model is already listed in `with(...)`");
                } else {
                    with.push(dependency);
                }
            }
        } else if meta.path == OBSERVE {
            observe.extend(read_observe(cx, &meta)?);
        } else if meta.path == SERIALIZER {
            let what = "a serializer type";
            serializer.set_opt(&meta.path, attr::path(cx, SERIALIZER, &meta, what, "serializer = NameOnly")?);
        } else if meta.path == MODEL_NAME {
            model_name.set_opt(&meta.path, read_model_name(cx, &meta)?);
        } else if meta.path == SCHEMA {
            schema.set_opt(&meta.path, attr::string(cx, SCHEMA, &meta, r#"schema = "com.example.Rental""#)?);
        } else if meta.path == SCHEMA_DIR {
            schema_dir.set_opt(&meta.path, attr::string(cx, SCHEMA_DIR, &meta, r#"schema_dir = "avro""#)?);
        } else if meta.path == DELAYED {
            delayed.set_opt(&meta.path, crate::delay::read(cx, &meta)?);
        } else {
            attr::unknown(cx, &meta, "`#[publish(...)]`", PUBLISH_KEYS)?;
        }
        Ok(())
    });

    let partition_key = match (partition_key.get(), partition_key_with.get()) {
        (Some(name), None) => PartitionKey::Field(name),
        (None, Some((_, path))) => PartitionKey::Resolver(path),
        (None, None) => PartitionKey::Inherit,
        (Some(name), Some((span, _))) => {
            cx.syn_error(syn::Error::new(
                span,
                "give either `partition_key` (a field) or `partition_key_with` (a function), not both",
            ));
            PartitionKey::Field(name)
        }
    };
    let Some(topic) = topic.get() else {
        if !topic_given && complete {
            cx.error_spanned_by(
                attr,
                "missing `topic` in `#[publish(...)]`\n\
                 help: the correct format looks like `#[publish(topic = \"v3_rentals\")]`",
            );
        }
        // Otherwise its value, or the attribute's syntax, was wrong, and that is recorded.
        return None;
    };
    Some(Publication {
        topic,
        partition_key,
        partition_key_to_i: partition_key_to_i.get(),
        with,
        observe,
        serializer: serializer.get(),
        schema: SchemaRef::from_keys(cx, schema.get(), schema_dir.get()),
        delayed: delayed.get().unwrap_or_default(),
        span: attr.path().span(),
    })
}

/// `topic = "v3_rentals"` or `topic = topics::Rentals`.
fn read_topic(cx: &Ctxt, meta: &ParseNestedMeta<'_>) -> syn::Result<Option<TopicRef>> {
    let Some(expr) = attr::value(cx, TOPIC, meta, r#"topic = "v3_rentals""#)? else { return Ok(None) };
    match expr {
        Expr::Lit(syn::ExprLit { lit: Lit::Str(lit), .. }) if lit.value().is_empty() => {
            cx.error_spanned_by(&lit, "`topic` cannot be empty");
            Ok(None)
        }
        Expr::Lit(syn::ExprLit { lit: Lit::Str(lit), .. }) => Ok(Some(TopicRef::Name(lit))),
        Expr::Path(path) if path.qself.is_none() && path.attrs.is_empty() => Ok(Some(TopicRef::Type(path.path))),
        other => {
            cx.error_spanned_by(
                &other,
                "expected a topic name or a `#[dionysus::topic]` type for `topic`, e.g. `topic = \"v3_rentals\"` or \
                 `topic = topics::Rentals`",
            );
            Ok(None)
        }
    }
}

/// `partition_key = account_id` or `partition_key = "account_id"`.
fn read_partition_key(cx: &Ctxt, meta: &ParseNestedMeta<'_>) -> syn::Result<Option<Name>> {
    let example = r#"partition_key = "account_id""#;
    let Some(expr) = attr::value(cx, PARTITION_KEY, meta, example)? else { return Ok(None) };
    let name = attr::expr_name(&expr);
    if name.is_none() {
        cx.error_spanned_by(
            &expr,
            format!(
                "expected a field name for `partition_key`, e.g. `{example}` (use `partition_key_with = path::to::fn` \
                 for a function)"
            ),
        );
    }
    Ok(name)
}

/// `with(BookingsFee, BookingsTax)`.
fn read_with(meta: &ParseNestedMeta<'_>) -> syn::Result<Punctuated<Path, Token![,]>> {
    if !meta.input.peek(syn::token::Paren) {
        return Err(meta.error("expected a list of models, e.g. `with(BookingsFee, BookingsTax)`"));
    }
    let content;
    syn::parenthesized!(content in meta.input);
    Punctuated::parse_terminated(&content)
}

/// `observe(Model, columns(a, b), via = "column")`; `None` when it names no columns.
fn read_observe(cx: &Ctxt, meta: &ParseNestedMeta<'_>) -> syn::Result<Option<Observe>> {
    if !meta.input.peek(syn::token::Paren) {
        return Err(meta.error(
            "expected `observe(Model, columns(column, …))`, e.g. `observe(Account, columns(default_check_in_time))`",
        ));
    }
    let content;
    syn::parenthesized!(content in meta.input);
    let model: Path = content.parse()?;
    let mut columns: Attr<'_, Vec<Ident>> = Attr::none(cx, COLUMNS);
    let mut via = Attr::none(cx, VIA);
    let mut complete = true;
    if !content.is_empty() {
        content.parse::<Token![,]>()?;
        let rest: TokenStream = content.parse()?;
        complete = attr::each_in_args(cx, rest, |meta| {
            if meta.path == COLUMNS {
                let list;
                syn::parenthesized!(list in meta.input);
                let list = Punctuated::<Ident, Token![,]>::parse_terminated_with(&list, Ident::parse_any)?;
                if list.is_empty() {
                    cx.error_spanned_by(&meta.path, "`columns(...)` needs at least one column");
                }
                columns.set(&meta.path, list.into_iter().collect());
            } else if meta.path == VIA {
                via.set_opt(&meta.path, attr::name(cx, VIA, &meta, r#"via = "account_id""#)?);
            } else {
                attr::unknown(cx, &meta, "`observe(...)`", OBSERVE_KEYS)?;
            }
            Ok(())
        });
    }
    let Some(columns) = columns.get() else {
        if !complete {
            return Ok(None);
        }
        cx.error_spanned_by(
            &model,
            "`observe(...)` needs the observed columns, e.g. `observe(Account, columns(default_check_in_time))`",
        );
        return Ok(None);
    };
    Ok(Some(Observe { model, columns, via: via.get() }))
}
