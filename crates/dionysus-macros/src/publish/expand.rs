//! Code generation for a valid publishable model: an `impl Publishable` whose constants point
//! at generic runtime functions, the type-level checks that need the compiler (a `with(...)`
//! model is publishable and related, observed columns exist), and the registry entry.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::DeriveInput;

use super::ast::{Model, PartitionKey, SoftDelete, TopicRef};

pub(crate) fn expand(model: &Model) -> TokenStream {
    let ident = &model.ident;
    let ident_str = ident.to_string();
    let model_name = &model.model_name;
    let table = &model.table;
    let table_str = table.segments.last().map(|segment| segment.ident.to_string()).unwrap_or_default();
    let pk_ident = &model.primary_key.ident;
    let pk_column = &model.primary_key.column;
    let pk_column_ident = syn::Ident::new(pk_column, model.primary_key.ident.span());
    let pk_ty = &model.primary_key.ty;
    let columns: Vec<&str> = model.fields.iter().map(|field| field.column.as_str()).collect();
    let field_idents: Vec<&syn::Ident> = model.fields.iter().map(|field| &field.ident).collect();
    let soft_delete = match &model.soft_delete {
        SoftDelete::Configured => quote!(__d::SoftDelete::Configured),
        SoftDelete::Column(column) => quote!(__d::SoftDelete::Column(#column)),
        SoftDelete::Disabled => quote!(__d::SoftDelete::Disabled),
    };
    let publish_updates = model.publish_updates_after_soft_delete;

    let mut helpers = Vec::new();
    let mut publications = Vec::new();
    for (index, publication) in model.publications.iter().enumerate() {
        let topic = match &publication.topic {
            TopicRef::Name(name) => quote!(#name),
            TopicRef::Type(path) => quote_spanned!(path.span()=> <#path as __d::Topic>::NAME),
        };
        let partition_key = match &publication.partition_key {
            PartitionKey::Inherit => quote!(__d::PartitionKeySource::Inherit),
            PartitionKey::Attribute(name) => quote!(__d::PartitionKeySource::Attribute(#name)),
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
        let mut dependencies = Vec::new();
        for (position, dependency) in publication.with.iter().enumerate() {
            let relation = format_ident!("__dionysus_with_{}_{}", index, position);
            let span = dependency.span();
            helpers.push(quote_spanned! {span=>
                fn #relation() -> __d::Relation {
                    #[allow(unused_imports)]
                    use __d::{NotRelated as _, OtherBelongsToOwner as _, OwnerBelongsToOther as _};
                    __d::relation::<#dependency, #ident, _>((&&&__d::RelationProbe::<#dependency, #ident>::NEW).relation())
                }
            });
            dependencies.push(quote_spanned! {span=>
                __d::Dependency { model: __d::model_entry::<#dependency>, relation: #relation }
            });
        }
        let mut observers = Vec::new();
        for (position, observe) in publication.observe.iter().enumerate() {
            let observed = &observe.model;
            let relation = format_ident!("__dionysus_observe_{}_{}", index, position);
            let check = format_ident!("__dionysus_observe_columns_{}_{}", index, position);
            let columns = &observe.columns;
            let column_names: Vec<String> = columns.iter().map(|column| column.to_string()).collect();
            let accesses = columns.iter().map(|column| quote_spanned!(column.span()=> let _ = &observed.#column;));
            let span = observed.span();
            helpers.push(quote_spanned! {span=>
                #[allow(dead_code)]
                fn #check(observed: &#observed) {
                    #(#accesses)*
                }
            });
            let relation_body = match &observe.via {
                Some(column) => quote!(__d::Relation::OwnerHoldsKey(#column)),
                None => quote_spanned! {span=>
                    #[allow(unused_imports)]
                    use __d::{NotRelated as _, OtherBelongsToOwner as _, OwnerBelongsToOther as _};
                    __d::relation::<#observed, #ident, _>((&&&__d::RelationProbe::<#observed, #ident>::NEW).relation())
                },
            };
            helpers.push(quote! {
                fn #relation() -> __d::Relation { #relation_body }
            });
            observers.push(quote_spanned! {span=>
                __d::Observer { model: __d::model_entry::<#observed>, columns: &[#(#column_names),*], relation: #relation }
            });
        }
        let serializer = match &publication.serializer {
            Some(path) => quote_spanned!(path.span()=> #path),
            None => quote!(__d::DefaultSerializer),
        };
        let span = publication.span;
        let location = quote_spanned!(span=> ::core::concat!(::core::file!(), ":", ::core::line!()));
        publications.push(quote! {
            __d::Publication {
                model: &<#ident as __d::Publishable>::MODEL,
                topic: #topic,
                partition_key: #partition_key,
                with: &[#(#dependencies),*],
                observe: &[#(#observers),*],
                serialize: __d::serialize_erased::<#ident, #serializer>,
                location: #location,
            }
        });
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

                fn load_filtered<'a>(
                    conn: &'a mut __d::diesel_async::AsyncPgConnection,
                    filter: __d::RecordFilter,
                    limit: ::core::option::Option<i64>,
                ) -> __d::BoxFuture<'a, __d::diesel::QueryResult<::std::vec::Vec<Self>>> {
                    use __d::diesel::{QueryDsl as _, ExpressionMethods as _};
                    let mut query = #table::table
                        .select(<Self as __d::diesel::SelectableHelper<__d::diesel::pg::Pg>>::as_select())
                        .filter(filter)
                        .order(#table::#pk_column_ident.asc())
                        .into_boxed();
                    if let ::core::option::Option::Some(limit) = limit {
                        query = query.limit(limit);
                    }
                    ::std::boxed::Box::pin(__d::diesel_async::RunQueryDsl::load(query, conn))
                }
            }

            __d::inventory::submit! {
                __d::ModelRegistration(__d::model_entry::<#ident>)
            }
        };
    }
}

/// On error: nothing but the errors (the struct itself is not ours to re-emit; a derive only
/// adds items). No placeholder impl is emitted, because a wrong one would publish nothing.
pub(crate) fn fallback(_input: &DeriveInput, _model: Option<&Model>) -> TokenStream {
    TokenStream::new()
}
