//! Code generation for a valid publishable model: an `impl Publishable` whose constants point
//! at generic runtime functions, the registry entry, and the checks that need the compiler
//! (a `with(...)` model is publishable and related, observed columns exist, a partition key
//! field is an integer). It cannot fail: `validate` has checked every name it looks up.

use proc_macro2::{Ident, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::Path;

use super::ast::{Model, Observe, PartitionKey, Publication, SoftDelete, TopicRef};
use crate::field_name;

pub(crate) fn expand(model: &Model) -> TokenStream {
    let ident = &model.ident;
    let Some(primary_key) = model.primary_key_field() else { return super::fallback::stub(ident) };
    let ident_str = ident.to_string();
    let model_name = &model.model_name;
    let table = &model.table;
    let table_str = table.segments.last().map(|segment| segment.ident.to_string()).unwrap_or_default();
    let pk_ident = &primary_key.ident;
    let pk_column = &primary_key.column;
    let pk_column_ident = format_ident!("{}", pk_column, span = pk_ident.span());
    let pk_ty = &primary_key.ty;
    let columns: Vec<&str> = model.fields.iter().map(|field| field.column.as_str()).collect();
    let field_idents: Vec<&Ident> = model.fields.iter().map(|field| &field.ident).collect();
    let soft_delete = match &model.soft_delete {
        SoftDelete::Configured => quote!(__d::SoftDelete::Configured),
        SoftDelete::Column(column) => {
            let column = &column.value;
            quote!(__d::SoftDelete::Column(#column))
        }
        SoftDelete::Disabled => quote!(__d::SoftDelete::Disabled),
    };
    let publish_updates = model.publish_updates_after_soft_delete;

    let mut helpers = Vec::new();
    let publications: Vec<TokenStream> = model
        .publications
        .iter()
        .enumerate()
        .map(|(index, publication)| expand_publication(model, index, publication, &mut helpers))
        .collect();
    if model.publications.iter().any(checks_topic_partition_key) {
        helpers.extend(field_names(model));
    }

    quote! {
        #[doc(hidden)]
        #[allow(non_snake_case, clippy::all)]
        const _: () = {
            use ::dionysus::__private as __d;

            #(#helpers)*

            #[automatically_derived]
            impl __d::Publishable for #ident {
                const MODEL: __d::ModelEntry = __d::ModelEntry {
                    model_name: #model_name,
                    table: #table_str,
                    primary_key: #pk_column,
                    id_kind: <#pk_ty as __d::PrimaryKeyType>::KIND,
                    attributes: &[#(#columns),*],
                    soft_delete: #soft_delete,
                    publish_updates_after_soft_delete: #publish_updates,
                    type_id: ::core::any::TypeId::of::<#ident>,
                    publications: __d::publications_of::<#ident>,
                    load: __d::load_erased::<#ident>,
                    rust_name: ::core::concat!(::core::module_path!(), "::", #ident_str),
                };

                const PUBLICATIONS: &'static [__d::Publication] = &[#(#publications),*];

                fn primary_key(&self) -> ::std::string::String {
                    ::std::string::ToString::to_string(&self.#pk_ident)
                }

                fn attribute(&self, name: &str) -> ::core::option::Option<__d::serde_json::Value> {
                    match name {
                        #(#columns => ::core::option::Option::Some(__d::attribute_value(&self.#field_idents)),)*
                        _ => ::core::option::Option::None,
                    }
                }

                fn load_source() -> __d::LoadSource {
                    __d::LoadSource::new(
                        <Self as __d::diesel::Selectable<__d::diesel::pg::Pg>>::construct_selection(),
                        #table::table,
                        #table::#pk_column_ident,
                    )
                }
            }

            __d::inventory::submit! {
                __d::ModelRegistration(__d::model_entry::<#ident>)
            }
        };
    }
}

/// One `Publication` constant; its helper functions and checks go to `helpers`.
fn expand_publication(
    model: &Model,
    index: usize,
    publication: &Publication,
    helpers: &mut Vec<TokenStream>,
) -> TokenStream {
    let ident = &model.ident;
    let topic = match &publication.topic {
        TopicRef::Name(name) => quote!(#name),
        TopicRef::Type(path) => quote_spanned!(path.span()=> <#path as __d::Topic>::NAME),
    };
    helpers.extend(partition_key_check(model, index, publication));
    let partition_key = match &publication.partition_key {
        PartitionKey::Inherit => quote!(__d::PartitionKeySource::Inherit),
        PartitionKey::Field(name) => {
            let name = &name.value;
            quote!(__d::PartitionKeySource::Attribute(#name))
        }
        PartitionKey::Resolver(path) => {
            let function = format_ident!("__dionysus_partition_key_{}", index);
            helpers.push(quote_spanned! {path.span()=>
                fn #function(record: &dyn __d::Record) -> ::core::option::Option<::std::string::String> {
                    let resolve: fn(&#ident) -> ::core::option::Option<::std::string::String> = #path;
                    record.as_any().downcast_ref::<#ident>().and_then(resolve)
                }
            });
            quote!(__d::PartitionKeySource::Resolver(#function))
        }
    };
    let dependencies = publication.with.iter().enumerate().map(|(position, dependency)| {
        let relation = format_ident!("__dionysus_with_{}_{}", index, position);
        let span = dependency.span();
        let probe = relation_probe(dependency, ident);
        helpers.push(quote_spanned! {span=>
            fn #relation() -> __d::Relation { #probe }
        });
        quote_spanned! {span=>
            __d::Dependency { model: __d::model_entry::<#dependency>, relation: #relation }
        }
    });
    let dependencies: Vec<TokenStream> = dependencies.collect();
    let observers: Vec<TokenStream> = publication
        .observe
        .iter()
        .enumerate()
        .map(|(position, observe)| expand_observer(ident, index, position, observe, helpers))
        .collect();
    let serializer = match &publication.serializer {
        Some(path) => quote_spanned!(path.span()=> #path),
        None => quote!(__d::DefaultSerializer),
    };
    let location = quote_spanned!(publication.span=> ::core::concat!(::core::file!(), ":", ::core::line!()));
    let schema = match &publication.schema {
        Some(schema) => {
            helpers.push(schema.embed());
            let name = schema.name.value();
            quote!(::core::option::Option::Some(#name))
        }
        None => quote!(::core::option::Option::None),
    };
    quote! {
        __d::Publication {
            model: &<#ident as __d::Publishable>::MODEL,
            topic: #topic,
            partition_key: #partition_key,
            with: &[#(#dependencies),*],
            observe: &[#(#observers),*],
            serialize: __d::serialize_erased::<#ident, #serializer>,
            schema: #schema,
            location: #location,
        }
    }
}

/// The relation between the owner and another model, found through diesel's `belongs_to`
/// (also a cascade's, `cascade(Owner -> Other)`).
pub(crate) fn relation_probe(other: &Path, owner: &impl ToTokens) -> TokenStream {
    quote_spanned! {other.span()=>
        #[allow(unused_imports)]
        use __d::{NotRelated as _, OtherBelongsToOwner as _, OwnerBelongsToOther as _};
        __d::relation::<#other, #owner, _>((&&&__d::RelationProbe::<#other, #owner>::NEW).relation())
    }
}

/// One `Observer` constant, plus its relation function and the field accesses that check the
/// observed columns exist.
fn expand_observer(
    ident: &Ident,
    index: usize,
    position: usize,
    observe: &Observe,
    helpers: &mut Vec<TokenStream>,
) -> TokenStream {
    let observed = &observe.model;
    let span = observed.span();
    let relation = format_ident!("__dionysus_observe_{}_{}", index, position);
    let check = format_ident!("__dionysus_observe_columns_{}_{}", index, position);
    let column_names: Vec<String> = observe.columns.iter().map(|column| column.to_string()).collect();
    let accesses = observe.columns.iter().map(|column| quote_spanned!(column.span()=> let _ = &observed.#column;));
    helpers.push(quote_spanned! {span=>
        #[allow(dead_code)]
        fn #check(observed: &#observed) {
            #(#accesses)*
        }
    });
    let relation_body = match &observe.via {
        Some(column) => {
            let column = &column.value;
            quote!(__d::Relation::OwnerHoldsKey(#column))
        }
        None => relation_probe(observed, ident),
    };
    helpers.push(quote! {
        fn #relation() -> __d::Relation { #relation_body }
    });
    quote_spanned! {span=>
        __d::Observer { model: __d::model_entry::<#observed>, columns: &[#(#column_names),*], relation: #relation }
    }
}

/// Whether a publication's partition key is its topic's, named by type, to be checked.
fn checks_topic_partition_key(publication: &Publication) -> bool {
    matches!((&publication.topic, &publication.partition_key), (TopicRef::Type(_), PartitionKey::Inherit))
        && publication.partition_key_to_i.is_none()
}

/// The check that a partition key field is an integer (dionysus-rb's `to_i` rule), unless the
/// publication opted into `to_i` with `partition_key_to_i`.
fn partition_key_check(model: &Model, index: usize, publication: &Publication) -> Option<TokenStream> {
    if publication.partition_key_to_i.is_some() {
        return None;
    }
    match (&publication.topic, &publication.partition_key) {
        (_, PartitionKey::Field(name)) => {
            let ty = &model.field(&name.value)?.ty;
            // An alias named where the key was written puts the error on that token.
            let alias = format_ident!("__DionysusPartitionKey{}", index, span = name.span);
            Some(quote! {
                type #alias = #ty;
                const _: () = __d::integer_partition_key::<#alias>();
            })
        }
        (TopicRef::Type(topic), PartitionKey::Inherit) => {
            let ident = &model.ident;
            let function = format_ident!("__dionysus_topic_partition_key_{}", index);
            Some(quote_spanned! {topic.span()=>
                #[allow(dead_code)]
                fn #function() {
                    #[allow(unused_imports)]
                    use __d::{FieldFound as _, FieldMissing as _};
                    __d::topic_partition_key(
                        (&&__d::FieldProbe::<#ident, <#topic as __d::Topic>::PartitionKeyField>::NEW).probe(),
                    );
                }
            })
        }
        _ => None,
    }
}

/// `FieldOf` for every field, so a topic's partition key can find its type.
fn field_names(model: &Model) -> impl Iterator<Item = TokenStream> + '_ {
    let ident = &model.ident;
    model.fields.iter().map(move |field| {
        let name = field_name::type_of(&field.column);
        let ty = &field.ty;
        quote! {
            impl __d::FieldOf<#name> for #ident { type Type = #ty; }
        }
    })
}
