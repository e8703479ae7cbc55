//! The one reader of diesel's `#[diesel(...)]` attributes, shared by every derive: the
//! table (`table_name = path`), the primary key (`primary_key(a, b)`) and a field's column
//! (`column_name = name`, raw identifiers unrawed). A malformed value of one of these keys
//! is recorded in the [`Ctxt`]; every other diesel key is skipped unread, since diesel's own
//! derives check those.
//!
//! What a derive does with the result (a default table name, a composite-key error) is the
//! derive's business, not this module's.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::meta::ParseNestedMeta;
use syn::punctuated::Punctuated;
use syn::{Attribute, Ident, LitStr, Path, Token};

use crate::attr::{self, Name};
use crate::ctxt::Ctxt;
use crate::symbol::{COLUMN_NAME, DIESEL, PRIMARY_KEY, TABLE_NAME};

/// The struct-level diesel settings a derive needs.
#[derive(Default)]
pub(crate) struct Container {
    /// `table_name = path`.
    pub(crate) table: Option<Path>,
    /// Whether `table_name` was written (a wrong value is an error of its own).
    pub(crate) table_given: bool,
    /// `primary_key(a, b)`.
    pub(crate) primary_key: Option<PrimaryKey>,
}

/// The columns of `primary_key(...)` and the list as written, for errors.
pub(crate) struct PrimaryKey {
    pub(crate) columns: Vec<Name>,
    pub(crate) tokens: TokenStream,
}

/// Reads the `#[diesel(...)]` attributes of a struct.
pub(crate) fn container(cx: &Ctxt, attrs: &[Attribute]) -> Container {
    let mut container = Container::default();
    attr::each_in_attrs(cx, attrs, DIESEL, |meta| {
        if meta.path == TABLE_NAME {
            container.table_given = true;
            let value = meta.value()?;
            container.table = Some(value.parse::<Path>().map_err(|error| {
                syn::Error::new(error.span(), "expected the diesel table's path, e.g. `table_name = rentals`")
            })?);
        } else if meta.path == PRIMARY_KEY {
            let content;
            syn::parenthesized!(content in meta.input);
            let columns = Punctuated::<Ident, Token![,]>::parse_terminated_with(&content, Ident::parse_any)?;
            container.primary_key = Some(PrimaryKey {
                tokens: if columns.is_empty() { meta.path.to_token_stream() } else { columns.to_token_stream() },
                columns: columns.iter().map(Name::from_ident).collect(),
            });
        } else {
            attr::skip_value(meta.input)?;
        }
        Ok(())
    });
    container
}

/// The column of a field: its `#[diesel(column_name = ...)]`, else the field's own name.
pub(crate) fn column(cx: &Ctxt, field: &syn::Field) -> Option<Name> {
    let ident = field.ident.as_ref()?;
    let mut column = Name::from_ident(ident);
    attr::each_in_attrs(cx, &field.attrs, DIESEL, |meta| {
        if meta.path == COLUMN_NAME {
            column = column_name(&meta)?;
        } else {
            attr::skip_value(meta.input)?;
        }
        Ok(())
    });
    Some(column)
}

/// `column_name = name` or `column_name = "name"` (a name diesel's `table!` can have).
fn column_name(meta: &ParseNestedMeta<'_>) -> syn::Result<Name> {
    let value = meta.value()?;
    if value.peek(LitStr) {
        let lit: LitStr = value.parse()?;
        let name = Name { value: lit.value(), span: lit.span() };
        match ident(&name) {
            Some(_) => Ok(name),
            None => Err(syn::Error::new(
                lit.span(),
                format!("`{}` is not a column name diesel's `table!` can declare", name.value),
            )),
        }
    } else {
        Ok(Name::from_ident(&value.call(Ident::parse_any)?))
    }
}

/// A column as a Rust identifier (raw for keywords, as `table!` declares it), on the name's
/// span; `None` for a name no `table!` can declare.
pub(crate) fn ident(name: &Name) -> Option<Ident> {
    let mut ident =
        syn::parse_str::<Ident>(&name.value).or_else(|_| syn::parse_str::<Ident>(&format!("r#{}", name.value))).ok()?;
    ident.set_span(name.span);
    Some(ident)
}

#[cfg(test)]
mod tests {
    use proc_macro2::Span;
    use syn::parse_quote;

    use super::*;

    #[test]
    fn reads_table_primary_key_and_columns_and_skips_other_keys() {
        let input: syn::DeriveInput = parse_quote! {
            #[diesel(table_name = crate::schema::rentals, check_for_backend(diesel::pg::Pg))]
            #[diesel(primary_key(r#type, account_id), treat_none_as_null = true)]
            struct Rental {
                #[diesel(sql_type = Text, column_name = r#type)]
                kind: String,
                #[diesel(column_name = "daily_price")]
                price: f64,
                name: String,
            }
        };
        let cx = Ctxt::new();
        let container = container(&cx, &input.attrs);
        let syn::Data::Struct(data) = &input.data else { panic!("a struct") };
        let columns: Vec<String> = data.fields.iter().filter_map(|field| column(&cx, field)).map(|c| c.value).collect();
        assert!(cx.check().is_ok());
        let table = container.table.map(|path| quote::quote!(#path).to_string());
        assert_eq!(table.as_deref(), Some("crate :: schema :: rentals"));
        let key: Vec<String> = container.primary_key.into_iter().flat_map(|key| key.columns).map(|c| c.value).collect();
        assert_eq!(key, ["type", "account_id"]);
        assert_eq!(columns, ["type", "daily_price", "name"]);
    }

    #[test]
    fn columns_become_identifiers_raw_for_keywords() {
        let name = |value: &str| Name { value: value.to_owned(), span: Span::call_site() };
        let text = |value: &str| ident(&name(value)).map(|ident| ident.to_string());
        assert_eq!(text("price").as_deref(), Some("price"));
        assert_eq!(text("type").as_deref(), Some("r#type"));
        assert_eq!(text("daily price"), None);
        assert_eq!(text("self"), None);
    }

    #[test]
    fn a_malformed_value_of_a_key_it_reads_is_an_error() {
        let input: syn::DeriveInput = parse_quote! {
            #[diesel(table_name = 5)]
            struct Rental { id: i64 }
        };
        let cx = Ctxt::new();
        let container = container(&cx, &input.attrs);
        assert!(container.table.is_none());
        assert!(cx.check().is_err());
    }
}
