//! `#[topic(...)]`: parse the arguments, validate them, expand to an `impl Topic` and an
//! `inventory` entry carrying the [`TopicDeclaration`](../../dionysus/registry/struct.TopicDeclaration.html).

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Fields, Item, ItemStruct, LitStr, Meta, Token};

use crate::attr::{self, Attr};
use crate::ctxt::{self, Ctxt};
use crate::suggest;
use crate::symbol::*;

const KEYS: &[&str] =
    &[NAMESPACE.0, NAME.0, PARTITION_KEY.0, PARTITIONS.0, REPLICATION_FACTOR.0, GENESIS_REPLICA.0, TOMBSTONE.0];

/// Kafka's limit on topic name length.
const MAX_TOPIC_NAME: usize = 249;

/// A validated topic declaration.
struct TopicModel {
    item: ItemStruct,
    namespace: Option<String>,
    name: String,
    partition_key: Option<String>,
    partitions: Option<i32>,
    replication_factor: Option<i16>,
    genesis_replica: bool,
    kafka_null_tombstone: bool,
}

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let cx = Ctxt::new();
    let item_struct = parse_item(&cx, item.clone());
    let model = parse_args(&cx, args).and_then(|parsed| {
        item_struct.clone().map(|item| TopicModel {
            item,
            namespace: parsed.namespace,
            name: parsed.name,
            partition_key: parsed.partition_key,
            partitions: parsed.partitions,
            replication_factor: parsed.replication_factor,
            genesis_replica: parsed.genesis_replica,
            kafka_null_tombstone: parsed.kafka_null_tombstone,
        })
    });
    match (cx.check(), model) {
        (Ok(()), Some(model)) => expand_valid(&model),
        (Err(error), _) => ctxt::with_fallback(error, fallback(item_struct, item)),
        (Ok(()), None) => fallback(item_struct, item),
    }
}

struct ParsedArgs {
    namespace: Option<String>,
    name: String,
    partition_key: Option<String>,
    partitions: Option<i32>,
    replication_factor: Option<i16>,
    genesis_replica: bool,
    kafka_null_tombstone: bool,
}

fn parse_item(cx: &Ctxt, item: TokenStream) -> Option<ItemStruct> {
    match syn::parse2::<Item>(item) {
        Ok(Item::Struct(item)) => {
            if !matches!(item.fields, Fields::Unit) {
                cx.error_spanned_by(
                    &item.fields,
                    "`#[dionysus::topic]` goes on a unit struct, e.g. `pub struct Rentals;`",
                );
            }
            if !item.generics.params.is_empty() {
                cx.error_spanned_by(&item.generics, "a topic struct cannot have generic parameters");
            }
            Some(item)
        }
        Ok(other) => {
            cx.error_spanned_by(other, "`#[dionysus::topic]` goes on a unit struct, e.g. `pub struct Rentals;`");
            None
        }
        Err(error) => {
            cx.syn_error(error);
            None
        }
    }
}

fn parse_args(cx: &Ctxt, args: TokenStream) -> Option<ParsedArgs> {
    let metas = match Punctuated::<Meta, Token![,]>::parse_terminated.parse2(args.clone()) {
        Ok(metas) => metas,
        Err(error) => {
            cx.syn_error(error);
            return None;
        }
    };

    let mut namespace = Attr::none(cx, NAMESPACE);
    let mut name = Attr::none(cx, NAME);
    let mut partition_key = Attr::none(cx, PARTITION_KEY);
    let mut partitions = Attr::none(cx, PARTITIONS);
    let mut replication_factor = Attr::none(cx, REPLICATION_FACTOR);
    let mut genesis_replica = Attr::none(cx, GENESIS_REPLICA);
    let mut tombstone = Attr::none(cx, TOMBSTONE);
    let mut name_given = false;

    for meta in &metas {
        let path = meta.path();
        if path == &NAMESPACE {
            let value = attr::get_lit_str(cx, NAMESPACE, meta, r#"namespace = "v3""#);
            let value = value.and_then(|lit| check_topic_part(cx, NAMESPACE, &lit));
            namespace.set_opt(path, value);
        } else if path == &NAME {
            name_given = true;
            let value = attr::get_lit_str(cx, NAME, meta, r#"name = "rentals""#);
            let value = value.and_then(|lit| check_topic_part(cx, NAME, &lit));
            name.set_opt(path, value);
        } else if path == &PARTITION_KEY {
            let value = attr::get_name(cx, PARTITION_KEY, meta, r#"partition_key = "account_id""#);
            let value = value.and_then(|(field, span)| check_field_name(cx, field, span));
            partition_key.set_opt(path, value);
        } else if path == &PARTITIONS {
            let value = attr::get_positive_int::<i32>(cx, PARTITIONS, meta, "partitions = 12");
            partitions.set_opt(path, value.map(|(value, _)| value));
        } else if path == &REPLICATION_FACTOR {
            let value = attr::get_positive_int::<i16>(cx, REPLICATION_FACTOR, meta, "replication_factor = 3");
            replication_factor.set_opt(path, value.map(|(value, _)| value));
        } else if path == &GENESIS_REPLICA {
            genesis_replica.set_opt(path, attr::get_bool(cx, GENESIS_REPLICA, meta));
        } else if path == &TOMBSTONE {
            let value = attr::get_lit_str(cx, TOMBSTONE, meta, r#"tombstone = "kafka_null""#);
            let value = value.and_then(|lit| match lit.value().as_str() {
                "json_null" => Some(false),
                "kafka_null" => Some(true),
                other => {
                    cx.error_spanned_by(
                        &lit,
                        format!(
                            "unknown tombstone encoding `{other}`; expected \"json_null\" (the text `null`, \
                             as dionysus-rb sends; the default) or \"kafka_null\" (a real Kafka null value)"
                        ),
                    );
                    None
                }
            });
            tombstone.set_opt(path, value);
        } else {
            let key = attr::key_of(meta);
            cx.syn_error(syn::Error::new(
                attr::key_span(meta),
                suggest::unknown_key_message("`#[dionysus::topic(...)]`", &key, KEYS),
            ));
        }
    }

    let namespace = namespace.get();
    let Some(name) = name.get() else {
        if name_given {
            // The value was there but invalid; that error has been reported.
            return None;
        }
        cx.syn_error(syn::Error::new(
            Span::call_site(),
            "missing `name` in `#[dionysus::topic(...)]`\n\
             help: the correct format looks like `#[dionysus::topic(namespace = \"v3\", name = \"rentals\")]`",
        ));
        return None;
    };
    if let Some(namespace) = &namespace {
        let full = format!("{namespace}_{name}");
        if full.len() > MAX_TOPIC_NAME {
            cx.error_spanned_by(
                &args,
                format!("topic name `{full}` is longer than Kafka's {MAX_TOPIC_NAME} characters"),
            );
        }
    }
    Some(ParsedArgs {
        namespace,
        name,
        partition_key: partition_key.get(),
        partitions: partitions.get(),
        replication_factor: replication_factor.get(),
        genesis_replica: genesis_replica.get().unwrap_or(false),
        kafka_null_tombstone: tombstone.get().unwrap_or(false),
    })
}

/// A namespace or name: non-empty, only the characters Kafka allows in topic names.
fn check_topic_part(cx: &Ctxt, key: Symbol, lit: &LitStr) -> Option<String> {
    let value = lit.value();
    if value.is_empty() {
        cx.error_spanned_by(lit, format!("`{key}` cannot be empty"));
        return None;
    }
    if let Some(bad) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        cx.error_spanned_by(
            lit,
            format!("`{key}` contains `{bad}`; Kafka topic names may only use ASCII letters, digits, `.`, `_` and `-`"),
        );
        return None;
    }
    if value.len() > MAX_TOPIC_NAME {
        cx.error_spanned_by(lit, format!("`{key}` is longer than Kafka's {MAX_TOPIC_NAME} characters"));
        return None;
    }
    Some(value)
}

/// A field name: a Rust identifier.
fn check_field_name(cx: &Ctxt, field: String, span: Span) -> Option<String> {
    let mut chars = field.chars();
    let valid_start = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if valid_start && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Some(field)
    } else {
        cx.syn_error(syn::Error::new(
            span,
            format!("`{field}` is not a field name; expected e.g. `partition_key = \"account_id\"`"),
        ));
        None
    }
}

fn option<T: quote::ToTokens>(value: &Option<T>) -> TokenStream {
    match value {
        Some(value) => quote!(::core::option::Option::Some(#value)),
        None => quote!(::core::option::Option::None),
    }
}

fn expand_valid(model: &TopicModel) -> TokenStream {
    let item = &model.item;
    let ident = &item.ident;
    let ident_str = ident.to_string();
    let name = &model.name;
    let full_name = match &model.namespace {
        Some(namespace) => format!("{namespace}_{name}"),
        None => name.clone(),
    };
    let namespace = option(&model.namespace);
    let partition_key = option(&model.partition_key);
    let partitions = option(&model.partitions);
    let replication_factor = option(&model.replication_factor);
    let genesis_replica = model.genesis_replica;
    let tombstone = if model.kafka_null_tombstone {
        quote!(::dionysus::__private::Tombstone::KafkaNull)
    } else {
        quote!(::dionysus::__private::Tombstone::JsonNull)
    };
    let span = ident.span();
    let declaration = quote_spanned! {span=>
        &::dionysus::__private::TopicDeclaration {
            namespace: #namespace,
            name: #name,
            full_name: #full_name,
            partition_key: #partition_key,
            partitions: #partitions,
            replication_factor: #replication_factor,
            genesis_replica: #genesis_replica,
            tombstone: #tombstone,
            declared_by: ::core::concat!(::core::module_path!(), "::", #ident_str),
            location: ::core::concat!(::core::file!(), ":", ::core::line!()),
        }
    };
    quote! {
        #item

        impl ::dionysus::__private::Topic for #ident {
            const DECLARATION: &'static ::dionysus::__private::TopicDeclaration = #declaration;
        }

        ::dionysus::__private::inventory::submit! {
            ::dionysus::__private::TopicEntry(<#ident as ::dionysus::__private::Topic>::DECLARATION)
        }
    }
}

/// On error: the struct as written plus a placeholder `Topic` impl, so uses of the type do
/// not add "trait not implemented" errors to the real one.
fn fallback(item: Option<ItemStruct>, original: TokenStream) -> TokenStream {
    match item {
        Some(item) if item.generics.params.is_empty() => {
            let ident = &item.ident;
            quote! {
                #item
                impl ::dionysus::__private::Topic for #ident {
                    const DECLARATION: &'static ::dionysus::__private::TopicDeclaration =
                        &::dionysus::__private::TopicDeclaration::INVALID;
                }
            }
        }
        Some(item) => quote!(#item),
        None => original,
    }
}
