//! `#[derive(Consume)]`: parse the struct's `#[consume(...)]` and `#[diesel(...)]` attributes
//! and its fields, validate them (required columns, supported types, soft-delete rules),
//! and expand to an `impl Replica` with a const descriptor, an `inventory` entry, a topic
//! reference for `Registry::validate`, and a const that names every column on the diesel
//! table (so a missing column is an error on the field).

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, GenericArgument, Ident, LitStr, Meta, Path, PathArguments, Token, Type};

use crate::attr::{self, Attr};
use crate::ctxt::{self, Ctxt};
use crate::suggest;
use crate::symbol::*;

const STRUCT_KEYS: &[&str] = &[TOPIC.0, MODEL.0, SOFT_DELETE.0, STRATEGY.0, SYNCED_DATA.0];
const FIELD_KEYS: &[&str] = &[FROM.0, SKIP.0];
const SUPPORTED: &str = "i16, i32, i64, f32, f64, bool, String, DateTime<Utc>, NaiveDateTime, NaiveDate, \
                         BigDecimal, serde_json::Value, Uuid, Vec<_>, or an Option of one of these";

/// A replica column as parsed.
struct Field {
    ident: Ident,
    column: String,
    from: Option<String>,
    kind: &'static str,
    nullable: bool,
}

/// A validated replica model.
struct Model {
    ident: Ident,
    table: Path,
    topic: String,
    model: String,
    soft_delete: Option<String>,
    cancel: bool,
    synced_data: Option<String>,
    fields: Vec<Field>,
}

pub(crate) fn expand_derive(input: TokenStream) -> TokenStream {
    let input = match syn::parse2::<DeriveInput>(input) {
        Ok(input) => input,
        Err(error) => return error.into_compile_error(),
    };
    let cx = Ctxt::new();
    let model = parse(&cx, &input);
    match (cx.check(), model) {
        (Ok(()), Some(model)) => expand(&model),
        (Err(error), _) => ctxt::with_fallback(error, fallback(&input)),
        (Ok(()), None) => fallback(&input),
    }
}

fn parse(cx: &Ctxt, input: &DeriveInput) -> Option<Model> {
    let ident = &input.ident;
    if !input.generics.params.is_empty() {
        cx.error_spanned_by(&input.generics, "a replica struct cannot have generic parameters");
    }
    let Data::Struct(data) = &input.data else {
        cx.error_spanned_by(ident, "`#[derive(Consume)]` goes on a struct with named fields, one per replica column");
        return None;
    };
    let Fields::Named(named) = &data.fields else {
        cx.error_spanned_by(ident, "`#[derive(Consume)]` goes on a struct with named fields, one per replica column");
        return None;
    };

    // #[diesel(table_name = ...)]
    let mut table: Option<Path> = None;
    for attribute in input.attrs.iter().filter(|a| a.path().is_ident("diesel")) {
        let _ = attribute.parse_nested_meta(|meta| {
            if meta.path.is_ident("table_name") {
                table = Some(meta.value()?.parse::<Path>()?);
            } else if meta.input.peek(Token![=]) {
                let _: syn::Expr = meta.value()?.parse()?;
            } else if meta.input.peek(syn::token::Paren) {
                let _content;
                syn::parenthesized!(_content in meta.input);
                let _: TokenStream = _content.parse()?;
            }
            Ok(())
        });
    }

    // #[consume(...)] on the struct
    let mut topic = Attr::none(cx, TOPIC);
    let mut model = Attr::none(cx, MODEL);
    let mut soft_delete = Attr::none(cx, SOFT_DELETE);
    let mut strategy = Attr::none(cx, STRATEGY);
    let mut synced_data = Attr::none(cx, SYNCED_DATA);
    let has_consume = input.attrs.iter().any(|a| a.path().is_ident("consume"));
    {
        for meta in &consume_metas(cx, &input.attrs) {
            let path = meta.path();
            if path == &TOPIC {
                topic.set_opt(path, attr::get_lit_str(cx, TOPIC, meta, r#"topic = "v3_rentals""#));
            } else if path == &MODEL {
                model.set_opt(path, attr::get_lit_str(cx, MODEL, meta, r#"model = "Rental""#));
            } else if path == &SOFT_DELETE {
                soft_delete
                    .set_opt(path, attr::get_name(cx, SOFT_DELETE, meta, r#"soft_delete = "synced_canceled_at""#));
            } else if path == &STRATEGY {
                strategy.set_opt(path, attr::get_lit_str(cx, STRATEGY, meta, r#"strategy = "destroy""#));
            } else if path == &SYNCED_DATA {
                synced_data.set_opt(path, attr::get_name(cx, SYNCED_DATA, meta, r#"synced_data = "synced_data""#));
            } else {
                cx.syn_error(syn::Error::new(
                    attr::key_span(meta),
                    suggest::unknown_key_message("`#[consume(...)]`", &attr::key_of(meta), STRUCT_KEYS),
                ));
            }
        }
    }

    // fields
    let mut fields = Vec::new();
    for field in &named.named {
        let Some(field_ident) = field.ident.clone() else { continue };
        let mut column = field_ident.to_string();
        for attribute in field.attrs.iter().filter(|a| a.path().is_ident("diesel")) {
            let _ = attribute.parse_nested_meta(|meta| {
                if meta.path.is_ident("column_name") {
                    let value = meta.value()?;
                    if value.peek(LitStr) {
                        column = value.parse::<LitStr>()?.value();
                    } else {
                        column = value.parse::<Ident>()?.to_string();
                    }
                } else if meta.input.peek(Token![=]) {
                    let _: syn::Expr = meta.value()?.parse()?;
                }
                Ok(())
            });
        }
        let mut from = Attr::none(cx, FROM);
        let mut skip = Attr::none(cx, SKIP);
        {
            for meta in &consume_metas(cx, &field.attrs) {
                let path = meta.path();
                if path == &FROM {
                    let value = attr::get_lit_str(cx, FROM, meta, r#"from = "daily_price""#);
                    let value = value.and_then(|lit| {
                        if lit.value().is_empty() {
                            cx.error_spanned_by(&lit, "`from` names the payload attribute and cannot be empty");
                            None
                        } else {
                            Some((lit.value(), lit.span()))
                        }
                    });
                    from.set_opt(path, value);
                } else if path == &SKIP {
                    skip.set_opt(path, attr::get_bool(cx, SKIP, meta));
                } else {
                    cx.syn_error(syn::Error::new(
                        attr::key_span(meta),
                        suggest::unknown_key_message("`#[consume(...)]` on a field", &attr::key_of(meta), FIELD_KEYS),
                    ));
                }
            }
        }
        let from = from.get();
        if skip.get().unwrap_or(false) {
            if let Some((_, span)) = &from {
                cx.syn_error(syn::Error::new(
                    *span,
                    "a skipped field takes no value from the payload; remove `from` or `skip`",
                ));
            }
            continue;
        }
        let (kind, nullable) = match classify(&field.ty) {
            Some(kind) => kind,
            None => {
                cx.error_spanned_by(
                    &field.ty,
                    format!(
                        "unsupported type for replica column `{field_ident}`; supported: {SUPPORTED}\n\
                         help: mark the field `#[consume(skip)]` to leave it to the application"
                    ),
                );
                continue;
            }
        };
        fields.push(Field { ident: field_ident, column, from: from.map(|(value, _)| value), kind, nullable });
    }

    let names: Vec<String> = fields.iter().map(|f| f.column.clone()).collect();
    let all_names: Vec<&str> = names.iter().map(String::as_str).collect();
    for required in ["synced_id", "synced_updated_at"] {
        if !names.iter().any(|name| name == required) {
            cx.error_spanned_by(
                ident,
                format!(
                    "replica struct `{ident}` has no `{required}` field\n\
                     help: add `pub {required}: {},` ({})",
                    if required == "synced_id" { "i64" } else { "Option<DateTime<Utc>>" },
                    if required == "synced_id" {
                        "the source record's id"
                    } else {
                        "the source record's updated_at, compared by the timestamp guard"
                    }
                ),
            );
        }
    }
    let check_field = |value: Option<(String, Span)>, key: Symbol| -> Option<String> {
        let (name, span) = value?;
        if names.contains(&name) {
            return Some(name);
        }
        let mut message = format!("`{key}` names `{name}`, which is not a column field of `{ident}`");
        if let Some(hint) = suggest::closest(&name, all_names.iter().copied()) {
            message.push_str(&format!("; did you mean `{hint}`?"));
        }
        cx.syn_error(syn::Error::new(span, message));
        None
    };
    let soft_delete = check_field(soft_delete.get(), SOFT_DELETE);
    let synced_data_explicit = synced_data.get();
    let synced_data_given = synced_data_explicit.is_some();
    let synced_data = match check_field(synced_data_explicit, SYNCED_DATA) {
        Some(name) => Some(name),
        None if !synced_data_given && names.iter().any(|name| name == "synced_data") => Some("synced_data".to_owned()),
        None => None,
    };
    if let Some(name) = &synced_data {
        if let Some(field) = fields.iter().find(|f| &f.column == name) {
            if field.kind != "Json" {
                cx.error_spanned_by(
                    &field.ident,
                    format!("`{name}` keeps the whole payload and must be a `serde_json::Value`"),
                );
            }
        }
    }
    let cancel = match strategy.get() {
        None => soft_delete.is_some(),
        Some(lit) => match lit.value().as_str() {
            "cancel" if soft_delete.is_some() => true,
            "cancel" => {
                cx.error_spanned_by(
                    &lit,
                    "strategy \"cancel\" sets the soft-delete column; add `soft_delete = \"synced_canceled_at\"`",
                );
                false
            }
            "destroy" => false,
            other => {
                cx.error_spanned_by(
                    &lit,
                    format!("unknown strategy `{other}`; expected \"cancel\" (soft delete, the default with `soft_delete`) or \"destroy\""),
                );
                false
            }
        },
    };

    let topic = topic.get();
    let model = model.get();
    if topic.is_none() || model.is_none() || table.is_none() {
        let missing: Vec<&str> = [topic.is_none().then_some("`topic`"), model.is_none().then_some("`model`")]
            .into_iter()
            .flatten()
            .collect();
        if !missing.is_empty() {
            let span =
                input.attrs.iter().find(|a| a.path().is_ident("consume")).map_or(ident.span(), |a| a.path().span());
            cx.syn_error(syn::Error::new(
                span,
                format!(
                    "missing {} in `#[consume(...)]`\nhelp: the correct format looks like \
                     `#[consume(topic = \"v3_rentals\", model = \"Rental\")]`{}",
                    missing.join(" and "),
                    if has_consume { "" } else { " above the struct" }
                ),
            ));
        }
        if table.is_none() {
            cx.error_spanned_by(
                ident,
                "missing `#[diesel(table_name = ...)]`: the replica table is the diesel table of the struct",
            );
        }
        return None;
    }
    let (Some(topic), Some(model), Some(table)) = (topic, model, table) else { return None };
    Some(Model {
        ident: ident.clone(),
        table,
        topic: topic.value(),
        model: model.value(),
        soft_delete,
        cancel,
        synced_data,
        fields,
    })
}

/// Every `key = value` of the `#[consume(...)]` attributes among `attrs`; syntax errors are
/// recorded.
fn consume_metas(cx: &Ctxt, attrs: &[syn::Attribute]) -> Vec<Meta> {
    let mut metas = Vec::new();
    for attribute in attrs.iter().filter(|a| a.path().is_ident("consume")) {
        match attribute.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated) {
            Ok(parsed) => metas.extend(parsed),
            Err(error) => cx.syn_error(error),
        }
    }
    metas
}

/// The column kind of a field type, and whether it is nullable.
fn classify(ty: &Type) -> Option<(&'static str, bool)> {
    let (inner, nullable) = match option_inner(ty) {
        Some(inner) => (inner, true),
        None => (ty, false),
    };
    let Type::Path(path) = inner else { return None };
    let last = path.path.segments.last()?;
    let kind = match last.ident.to_string().as_str() {
        "i16" | "i32" | "i64" => "Integer",
        "f32" | "f64" => "Float",
        "bool" => "Bool",
        "String" => "Text",
        "DateTime" | "NaiveDateTime" => "Timestamp",
        "NaiveDate" => "Date",
        "BigDecimal" => "Decimal",
        "Value" | "JsonValue" => "Json",
        "Uuid" => "Uuid",
        "Vec" => "Array",
        _ => return None,
    };
    Some((kind, nullable))
}

fn option_inner(ty: &Type) -> Option<&Type> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != "Option" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else { return None };
    match args.args.first()? {
        GenericArgument::Type(inner) => Some(inner),
        _ => None,
    }
}

fn option_str(value: Option<&str>) -> TokenStream {
    match value {
        Some(value) => quote!(::core::option::Option::Some(#value)),
        None => quote!(::core::option::Option::None),
    }
}

fn expand(model: &Model) -> TokenStream {
    let ident = &model.ident;
    let ident_str = ident.to_string();
    let table = &model.table;
    let table_name = table.segments.last().map(|s| s.ident.to_string()).unwrap_or_default();
    let topic = &model.topic;
    let source_model = &model.model;
    let columns = model.fields.iter().map(|field| {
        let name = &field.column;
        let source = match (&field.from, &model.soft_delete) {
            (Some(from), _) => from.clone(),
            (None, Some(soft)) if soft == name => "synced_canceled_at".to_owned(),
            (None, _) => name.clone(),
        };
        let kind = format_ident!("{}", field.kind);
        let nullable = field.nullable;
        quote! {
            ::dionysus::__private::Column {
                name: #name,
                source: #source,
                kind: ::dionysus::__private::ColumnKind::#kind,
                nullable: #nullable,
            }
        }
    });
    let has = |name: &str| model.fields.iter().any(|f| f.column == name);
    let created = option_str(has("synced_created_at").then_some("synced_created_at"));
    let soft_delete = option_str(model.soft_delete.as_deref());
    let synced_data = option_str(model.synced_data.as_deref());
    let strategy = if model.cancel { quote!(Cancel) } else { quote!(Destroy) };
    let column_checks = model.fields.iter().map(|field| {
        let column = format_ident!("{}", field.column, span = field.ident.span());
        quote_spanned!(field.ident.span()=> let _ = #table::#column;)
    });
    quote! {
        impl ::dionysus::__private::Replica for #ident {
            const DESCRIPTOR: &'static ::dionysus::__private::ReplicaDescriptor = &::dionysus::__private::ReplicaDescriptor {
                model: #source_model,
                topic: #topic,
                table: #table_name,
                columns: &[#(#columns),*],
                synced_id: "synced_id",
                synced_updated_at: "synced_updated_at",
                synced_created_at: #created,
                soft_delete: #soft_delete,
                strategy: ::dionysus::__private::DestroyStrategy::#strategy,
                synced_data: #synced_data,
                declared_by: ::core::concat!(::core::module_path!(), "::", #ident_str),
                location: ::core::concat!(::core::file!(), ":", ::core::line!()),
            };
        }

        ::dionysus::__private::inventory::submit! {
            ::dionysus::__private::ReplicaEntry(<#ident as ::dionysus::__private::Replica>::DESCRIPTOR)
        }

        ::dionysus::__private::inventory::submit! {
            ::dionysus::__private::TopicReferenceEntry(&::dionysus::__private::TopicReference {
                topic: #topic,
                by: ::core::concat!("replica ", ::core::module_path!(), "::", #ident_str),
                location: ::core::concat!(::core::file!(), ":", ::core::line!()),
            })
        }

        const _: () = {
            #(#column_checks)*
        };
    }
}

/// On error: a placeholder `Replica` impl, so uses of the type add no further errors.
fn fallback(input: &DeriveInput) -> TokenStream {
    if !input.generics.params.is_empty() {
        return TokenStream::new();
    }
    let ident = &input.ident;
    quote! {
        impl ::dionysus::__private::Replica for #ident {
            const DESCRIPTOR: &'static ::dionysus::__private::ReplicaDescriptor =
                &::dionysus::__private::ReplicaDescriptor::INVALID;
        }
    }
}
