//! Code generation for a valid replica struct: an `impl Replica` whose descriptor is a
//! constant (each column's kind, nullability and SQL type read from its field type's
//! `ColumnType`), its registry entry and topic reference, and the checks that need the
//! compiler (each column exists on the diesel table, the payload column is a JSON value). It
//! cannot fail: `validate` has checked every name it looks up.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

use syn::LitStr;

use super::ast::{Cancel, CancelValue, Replica, Strategy};
use crate::diesel;

pub(crate) fn expand(replica: &Replica) -> TokenStream {
    let ident = &replica.ident;
    let ident_str = ident.to_string();
    let (Some(table), Some(topic), Some(model)) = (&replica.table, &replica.topic, &replica.model) else {
        return super::fallback(ident);
    };
    let table_name = table.segments.last().map(|segment| segment.ident.to_string()).unwrap_or_default();
    let columns = replica.fields.iter().map(|field| {
        let name = &field.column.value;
        // A role column's attribute is chosen at run time (`ReplicaDescriptor::timestamp_role`).
        let source = field.from.as_ref().map_or_else(|| name.clone(), LitStr::value);
        let ty = &field.ty;
        quote! {
            __d::Column {
                name: #name,
                source: #source,
                kind: <#ty as __d::ColumnType>::KIND,
                nullable: <#ty as __d::ColumnType>::NULLABLE,
                sql_type: <#ty as __d::ColumnType>::SQL_TYPE,
            }
        }
    });
    // Each role with the default attribute names; the consumer resolves the ones not named
    // here against the configured names.
    let column_of = |field: Option<&super::ast::Field>| option(field.map(|field| field.column.value.as_str()));
    let synced_id = replica.synced_id.as_ref().map_or("synced_id", |name| name.value.as_str());
    let updated = column_of(replica.role(replica.synced_updated_at.as_ref(), "synced_updated_at"));
    let created = column_of(replica.role(replica.synced_created_at.as_ref(), "synced_created_at"));
    let soft_delete = column_of(replica.soft_delete_field());
    let synced_data = replica.synced_data_field();
    let synced_data_name = column_of(synced_data);
    let strategy = match (&replica.cancel, replica.strategy()) {
        (Some(Cancel { column, value }), _) => {
            let column = &column.value;
            let value = match value {
                CancelValue::Text(text) => quote!(Text(#text)),
                CancelValue::Integer(number) => quote!(Integer(#number)),
                CancelValue::Bool(flag) => quote!(Bool(#flag)),
            };
            quote!(Set { column: #column, value: __d::CancelValue::#value })
        }
        (None, Strategy::Cancel) => quote!(Cancel),
        (None, Strategy::Destroy) => quote!(Destroy),
    };
    let named = |name: &Option<crate::attr::Name>| name.is_some();
    let (named_id, named_created, named_updated, named_soft, named_data, named_strategy) = (
        named(&replica.synced_id),
        named(&replica.synced_created_at),
        named(&replica.synced_updated_at),
        named(&replica.soft_delete),
        named(&replica.synced_data),
        replica.strategy_named(),
    );
    let column_checks = replica.fields.iter().filter_map(|field| {
        let column = diesel::ident(&field.column)?;
        Some(quote_spanned!(field.ident.span()=> let _ = #table::#column;))
    });
    let payload_check = synced_data.map(|field| {
        let ty = &field.ty;
        quote_spanned!(ty.span()=> const _: () = __d::payload_column::<#ty>();)
    });
    let tracked = replica.schema.as_ref().map(crate::avro::SchemaRef::embed);
    let cascades =
        crate::cascade::expand(&replica.cascades, topic, crate::cascade::Source::Replica { model }, &ident_str);
    quote! {
        #[doc(hidden)]
        #[allow(non_snake_case, clippy::all)]
        const _: () = {
            use ::dionysus::__private as __d;

            #tracked

            #[automatically_derived]
            impl __d::Replica for #ident {
                const DESCRIPTOR: &'static __d::ReplicaDescriptor = &__d::ReplicaDescriptor {
                    model: #model,
                    topic: #topic,
                    table: #table_name,
                    columns: &[#(#columns),*],
                    synced_id: #synced_id,
                    synced_updated_at: #updated,
                    synced_created_at: #created,
                    soft_delete: #soft_delete,
                    strategy: __d::DestroyStrategy::#strategy,
                    synced_data: #synced_data_name,
                    named: __d::NamedRoles {
                        synced_id: #named_id,
                        synced_created_at: #named_created,
                        synced_updated_at: #named_updated,
                        soft_delete: #named_soft,
                        synced_data: #named_data,
                        strategy: #named_strategy,
                    },
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
            #cascades
        };
    }
}

fn option(value: Option<&str>) -> TokenStream {
    match value {
        Some(value) => quote!(::core::option::Option::Some(#value)),
        None => quote!(::core::option::Option::None),
    }
}
