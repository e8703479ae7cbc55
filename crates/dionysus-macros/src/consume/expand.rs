//! Code generation for a valid replica struct: an `impl Replica` whose descriptor is a
//! constant (each column's kind and nullability read from its field type's `ColumnType`),
//! its registry entry and topic reference, and the checks that need the compiler (each
//! column exists on the diesel table, the payload column is a JSON value). It cannot fail:
//! `validate` has checked every name it looks up.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

use super::ast::{Replica, Strategy};
use crate::diesel;

pub(crate) fn expand(replica: &Replica) -> TokenStream {
    let ident = &replica.ident;
    let ident_str = ident.to_string();
    let (Some(table), Some(topic), Some(model)) = (&replica.table, &replica.topic, &replica.model) else {
        return super::fallback(ident);
    };
    let table_name = table.segments.last().map(|segment| segment.ident.to_string()).unwrap_or_default();
    let soft_delete = replica.soft_delete.as_ref().map(|name| name.value.as_str());
    let columns = replica.fields.iter().map(|field| {
        let name = &field.column.value;
        let source = match (&field.from, soft_delete) {
            (Some(from), _) => from.value(),
            (None, Some(soft)) if soft == name => "synced_canceled_at".to_owned(),
            (None, _) => name.clone(),
        };
        let ty = &field.ty;
        quote! {
            __d::Column {
                name: #name,
                source: #source,
                kind: <#ty as __d::ColumnType>::KIND,
                nullable: <#ty as __d::ColumnType>::NULLABLE,
            }
        }
    });
    let created = option(replica.field("synced_created_at").map(|_| "synced_created_at"));
    let soft_delete = option(soft_delete);
    let synced_data = replica.synced_data_field();
    let synced_data_name = option(synced_data.map(|field| field.column.value.as_str()));
    let strategy = match replica.strategy() {
        Strategy::Cancel => quote!(Cancel),
        Strategy::Destroy => quote!(Destroy),
    };
    let column_checks = replica.fields.iter().filter_map(|field| {
        let column = diesel::ident(&field.column)?;
        Some(quote_spanned!(field.ident.span()=> let _ = #table::#column;))
    });
    let payload_check = synced_data.map(|field| {
        let ty = &field.ty;
        quote_spanned!(ty.span()=> const _: () = __d::payload_column::<#ty>();)
    });
    quote! {
        #[doc(hidden)]
        #[allow(non_snake_case, clippy::all)]
        const _: () = {
            use ::dionysus::__private as __d;

            #[automatically_derived]
            impl __d::Replica for #ident {
                const DESCRIPTOR: &'static __d::ReplicaDescriptor = &__d::ReplicaDescriptor {
                    model: #model,
                    topic: #topic,
                    table: #table_name,
                    columns: &[#(#columns),*],
                    synced_id: "synced_id",
                    synced_updated_at: "synced_updated_at",
                    synced_created_at: #created,
                    soft_delete: #soft_delete,
                    strategy: __d::DestroyStrategy::#strategy,
                    synced_data: #synced_data_name,
                    declared_by: ::core::concat!(::core::module_path!(), "::", #ident_str),
                    location: ::core::concat!(::core::file!(), ":", ::core::line!()),
                };
            }

            __d::inventory::submit! {
                __d::ReplicaEntry(<#ident as __d::Replica>::DESCRIPTOR)
            }

            __d::inventory::submit! {
                __d::TopicReferenceEntry(&__d::TopicReference {
                    topic: #topic,
                    by: ::core::concat!("replica ", ::core::module_path!(), "::", #ident_str),
                    location: ::core::concat!(::core::file!(), ":", ::core::line!()),
                })
            }

            const _: () = {
                #(#column_checks)*
            };
            #payload_check
        };
    }
}

fn option(value: Option<&str>) -> TokenStream {
    match value {
        Some(value) => quote!(::core::option::Option::Some(#value)),
        None => quote!(::core::option::Option::None),
    }
}
