//! Code generation for a valid topic: the struct as written, an `impl Topic` whose
//! declaration is a constant (with the partition key as a type-level field name, for the
//! models published on it), its registry entry, and for an Avro topic the registry entry of
//! each schema file, its text embedded (so the crate is rebuilt when one changes).

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned, ToTokens};

use super::{KeyConfig, Topic};
use crate::field_name;

pub(super) fn expand(topic: &Topic) -> TokenStream {
    let item = &topic.item;
    let ident = &item.ident;
    let ident_str = ident.to_string();
    let name = &topic.name;
    let full_name = match &topic.namespace {
        Some(namespace) => format!("{namespace}_{name}"),
        None => name.clone(),
    };
    let namespace = option(topic.namespace.as_ref());
    let partition_key = option(topic.partition_key.as_ref().map(|key| &key.value));
    let partition_key_with = option(topic.partition_key_with.as_ref().map(|path| quote!(__d::PartitionKeyWith(#path))));
    let partitions = option(topic.partitions.as_ref());
    let replication_factor = option(topic.replication_factor.as_ref());
    let genesis_replica = topic.genesis_replica;
    let tombstone = if topic.kafka_null_tombstone { quote!(KafkaNull) } else { quote!(JsonNull) };
    let partition_key_field = match &topic.partition_key {
        Some(key) => field_name::type_of(&key.value),
        None => quote!(__d::NoField),
    };
    let (format, tracked) = match &topic.avro {
        Some(avro) => {
            let schema = avro.schema.name.value();
            let mut tracked = vec![avro.schema.embed()];
            let key = match &avro.key {
                KeyConfig::None => quote!(__d::KeyConfig::None),
                KeyConfig::Plain => quote!(__d::KeyConfig::Plain),
                KeyConfig::Field(field) => {
                    let field = &field.value;
                    quote!(__d::KeyConfig::Field(#field))
                }
                KeyConfig::Schema(key) => {
                    tracked.push(key.embed());
                    let key = key.name.value();
                    quote!(__d::KeyConfig::Schema(#key))
                }
            };
            (quote!(__d::TopicFormat::Avro { schema: #schema, key: #key }), tracked)
        }
        None => (quote!(__d::TopicFormat::Json), Vec::new()),
    };
    let span = ident.span();
    let declaration = quote_spanned! {span=>
        &__d::TopicDeclaration {
            namespace: #namespace,
            name: #name,
            full_name: #full_name,
            partition_key: #partition_key,
            partition_key_with: #partition_key_with,
            partitions: #partitions,
            replication_factor: #replication_factor,
            genesis_replica: #genesis_replica,
            tombstone: __d::Tombstone::#tombstone,
            format: #format,
            declared_by: ::core::concat!(::core::module_path!(), "::", #ident_str),
            location: ::core::concat!(::core::file!(), ":", ::core::line!()),
        }
    };
    quote! {
        #item

        #[doc(hidden)]
        const _: () = {
            use ::dionysus::__private as __d;

            #(#tracked)*

            #[automatically_derived]
            impl __d::Topic for #ident {
                const DECLARATION: &'static __d::TopicDeclaration = #declaration;
                type PartitionKeyField = #partition_key_field;
            }

            __d::inventory::submit! {
                __d::TopicEntry(<#ident as __d::Topic>::DECLARATION)
            }
        };
    }
}

fn option<T: ToTokens>(value: Option<T>) -> TokenStream {
    match value {
        Some(value) => quote!(::core::option::Option::Some(#value)),
        None => quote!(::core::option::Option::None),
    }
}
