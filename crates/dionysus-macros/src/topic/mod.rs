//! `#[dionysus::topic(...)]` on a unit struct: [`parse`] the arguments and the struct,
//! [`validate`] the rules across keys, then [`expand`] into the struct, an `impl Topic` and
//! a registry entry carrying the `TopicDeclaration` — or the errors with the struct and a
//! placeholder impl ([`fallback`]).

mod expand;
mod parse;
mod validate;

use proc_macro2::TokenStream;
use quote::quote;
use syn::ItemStruct;

use crate::attr::Name;
use crate::avro::SchemaRef;
use crate::ctxt::{self, Ctxt};

/// A topic declaration.
pub(crate) struct Topic {
    pub(crate) item: ItemStruct,
    pub(crate) namespace: Option<String>,
    pub(crate) name: String,
    /// Where `name` was written.
    pub(crate) name_span: proc_macro2::Span,
    pub(crate) partition_key: Option<Name>,
    /// `partition_key_with = path::to::fn`: `fn(&dyn Record) -> Option<String>`.
    pub(crate) partition_key_with: Option<syn::Path>,
    pub(crate) partitions: Option<i32>,
    pub(crate) replication_factor: Option<i16>,
    pub(crate) genesis_replica: bool,
    pub(crate) kafka_null_tombstone: bool,
    /// `format = "avro"`: the record schema and the key config; `None` for the JSON envelope.
    pub(crate) avro: Option<AvroTopic>,
}

/// An Avro topic's settings.
pub(crate) struct AvroTopic {
    pub(crate) schema: SchemaRef,
    pub(crate) key: KeyConfig,
}

/// `key(...)` of an Avro topic (deimos' `key_config`).
pub(crate) enum KeyConfig {
    /// `key(none)`: messages carry no key.
    None,
    /// `key(plain)`: the record's primary key as text (the default).
    Plain,
    /// `key(field = id)`: the value of a schema field, encoded with a one-field key schema.
    Field(Name),
    /// `key(schema = "com.example.RentalKey")`: a key record schema whose fields are taken
    /// from the record.
    Schema(SchemaRef),
}

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let cx = Ctxt::new();
    let item_struct = parse::item(&cx, item.clone());
    let args = parse::args(&cx, args);
    let topic = match (args, item_struct.clone()) {
        (Some(args), Some(item)) => Some(args.into_topic(item)),
        _ => None,
    };
    if let Some(topic) = &topic {
        validate::check(&cx, topic);
    }
    match (cx.check(), topic) {
        (Ok(()), Some(topic)) => expand::expand(&topic),
        (Err(error), _) => ctxt::with_fallback(error, fallback(item_struct, item)),
        (Ok(()), None) => fallback(item_struct, item),
    }
}

/// On error: the struct as written plus a placeholder `Topic` impl (never registered), so
/// uses of the type add no "trait not implemented" errors to the real one.
fn fallback(item: Option<ItemStruct>, original: TokenStream) -> TokenStream {
    match item {
        Some(item) if item.generics.params.is_empty() => {
            let ident = &item.ident;
            quote! {
                #item
                impl ::dionysus::__private::Topic for #ident {
                    const DECLARATION: &'static ::dionysus::__private::TopicDeclaration =
                        &::dionysus::__private::TopicDeclaration::INVALID;
                    type PartitionKeyField = ::dionysus::__private::NoField;
                }
            }
        }
        Some(item) => quote!(#item),
        None => original,
    }
}
