//! Typed reading of `key = value` attribute arguments: a set-once holder that reports
//! duplicate keys, and readers for each kind of value that name the key and show the expected
//! form when the value has the wrong type.

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, Lit, Meta};

use crate::ctxt::Ctxt;
use crate::symbol::Symbol;

/// A value that may be set once; a second `set` records a "duplicate key" error.
pub(crate) struct Attr<'c, T> {
    cx: &'c Ctxt,
    name: Symbol,
    tokens: TokenStream,
    value: Option<T>,
}

impl<'c, T> Attr<'c, T> {
    pub(crate) fn none(cx: &'c Ctxt, name: Symbol) -> Self {
        Attr { cx, name, tokens: TokenStream::new(), value: None }
    }

    pub(crate) fn set<A: ToTokens>(&mut self, obj: A, value: T) {
        let tokens = obj.into_token_stream();
        if self.value.is_some() {
            self.cx.error_spanned_by(tokens, format!("duplicate key `{}`: it may be given once", self.name));
        } else {
            self.tokens = tokens;
            self.value = Some(value);
        }
    }

    pub(crate) fn set_opt<A: ToTokens>(&mut self, obj: A, value: Option<T>) {
        if let Some(value) = value {
            self.set(obj, value);
        }
    }

    pub(crate) fn get(self) -> Option<T> {
        self.value
    }
}

/// The literal on the right of `key = <literal>`, or an error saying a value is needed.
fn value_expr<'m>(cx: &Ctxt, key: Symbol, meta: &'m Meta, example: &str) -> Option<&'m Expr> {
    match meta {
        Meta::NameValue(name_value) => Some(&name_value.value),
        _ => {
            cx.error_spanned_by(meta, format!("`{key}` needs a value, e.g. `{example}`"));
            None
        }
    }
}

fn lit(expr: &Expr) -> Option<&Lit> {
    match expr {
        Expr::Lit(ExprLit { lit, .. }) => Some(lit),
        Expr::Group(group) => lit(&group.expr),
        _ => None,
    }
}

/// `key = "text"`.
pub(crate) fn get_lit_str(cx: &Ctxt, key: Symbol, meta: &Meta, example: &str) -> Option<syn::LitStr> {
    let expr = value_expr(cx, key, meta, example)?;
    match lit(expr) {
        Some(Lit::Str(string)) => Some(string.clone()),
        _ => {
            cx.error_spanned_by(expr, format!("expected a string for `{key}`, e.g. `{example}`"));
            None
        }
    }
}

/// `key = 12` with a positive integer that fits `N`.
pub(crate) fn get_positive_int<N>(cx: &Ctxt, key: Symbol, meta: &Meta, example: &str) -> Option<(N, Span)>
where
    N: std::str::FromStr + PartialOrd + Default,
    N::Err: std::fmt::Display,
{
    let expr = value_expr(cx, key, meta, example)?;
    match lit(expr) {
        Some(Lit::Int(int)) => match int.base10_parse::<N>() {
            Ok(value) if value > N::default() => Some((value, int.span())),
            Ok(_) => {
                cx.error_spanned_by(int, format!("`{key}` must be at least 1"));
                None
            }
            Err(_) => {
                cx.error_spanned_by(int, format!("`{key}` is out of range"));
                None
            }
        },
        _ if matches!(expr, Expr::Unary(syn::ExprUnary { op: syn::UnOp::Neg(_), .. })) => {
            cx.error_spanned_by(expr, format!("`{key}` must be at least 1"));
            None
        }
        _ => {
            cx.error_spanned_by(expr, format!("expected an integer for `{key}`, e.g. `{example}`"));
            None
        }
    }
}

/// `key = true`, `key = false` or the bare flag `key`.
pub(crate) fn get_bool(cx: &Ctxt, key: Symbol, meta: &Meta) -> Option<bool> {
    match meta {
        Meta::Path(_) => Some(true),
        Meta::NameValue(name_value) => match lit(&name_value.value) {
            Some(Lit::Bool(boolean)) => Some(boolean.value),
            _ => {
                cx.error_spanned_by(
                    &name_value.value,
                    format!("expected `true` or `false` for `{key}`, e.g. `{key} = true` or just `{key}`"),
                );
                None
            }
        },
        Meta::List(list) => {
            cx.error_spanned_by(list, format!("expected `{key} = true` or just `{key}`"));
            None
        }
    }
}

/// `key = "field"` or `key = field`: a name given as a string or as a plain identifier.
pub(crate) fn get_name(cx: &Ctxt, key: Symbol, meta: &Meta, example: &str) -> Option<(String, Span)> {
    let expr = value_expr(cx, key, meta, example)?;
    match expr {
        Expr::Path(path) if path.qself.is_none() && path.path.get_ident().is_some() => {
            path.path.get_ident().map(|ident| (ident.to_string(), ident.span()))
        }
        _ => match lit(expr) {
            Some(Lit::Str(string)) => Some((string.value(), string.span())),
            _ => {
                cx.error_spanned_by(expr, format!("expected a field name for `{key}`, e.g. `{example}`"));
                None
            }
        },
    }
}

/// The key of a meta item as text, for "unknown key" messages.
pub(crate) fn key_of(meta: &Meta) -> String {
    meta.path().to_token_stream().to_string().replace(' ', "")
}

/// Span of the key of a meta item.
pub(crate) fn key_span(meta: &Meta) -> Span {
    meta.path().span()
}
