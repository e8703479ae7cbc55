//! Reading attribute arguments, in one style for every macro: each `key …` item of an
//! attribute (or of an attribute macro's arguments) goes to a closure that compares its key
//! with the [`Symbol`] constants and reads the value with one of the readers here. A reader
//! records a wrong value in the [`Ctxt`] (naming the key and showing the expected form) and
//! returns `Ok(None)`, so one compilation shows every mistake; only broken syntax ends an
//! attribute early. [`Attr`] holds a value that may be given once, and [`unknown`] is the
//! one "unknown key" report.
//!
//! This module knows no macro's keys; each macro's `parse` does.

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::meta::ParseNestedMeta;
use syn::parse::{ParseStream, Parser};
use syn::{Attribute, Expr, ExprLit, Lit, LitStr, Path, Token};

use crate::ctxt::Ctxt;
use crate::suggest;
use crate::symbol::Symbol;

/// A value that may be set once; a second `set` records a "duplicate key" error.
pub(crate) struct Attr<'c, T> {
    cx: &'c Ctxt,
    name: Symbol,
    value: Option<T>,
}

impl<'c, T> Attr<'c, T> {
    pub(crate) fn none(cx: &'c Ctxt, name: Symbol) -> Self {
        Attr { cx, name, value: None }
    }

    /// Sets the value; `obj` (usually the key) is where a duplicate is reported.
    pub(crate) fn set<A: ToTokens>(&mut self, obj: A, value: T) {
        if self.value.is_some() {
            self.cx.error_spanned_by(obj, format!("duplicate key `{}`: it may be given once", self.name));
        } else {
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

/// A name given as `"text"` or as an identifier, with the span of what was written.
#[derive(Clone, Debug)]
pub(crate) struct Name {
    pub(crate) value: String,
    pub(crate) span: Span,
}

impl Name {
    pub(crate) fn from_ident(ident: &syn::Ident) -> Name {
        Name { value: ident.unraw().to_string(), span: ident.span() }
    }
}

/// Runs `read` on each item of every `#[<name>(...)]` among `attrs`. `false` when broken
/// syntax (recorded) ended an attribute early, so a caller does not also report its
/// remaining keys as missing.
pub(crate) fn each_in_attrs(
    cx: &Ctxt,
    attrs: &[Attribute],
    name: Symbol,
    mut read: impl FnMut(ParseNestedMeta<'_>) -> syn::Result<()>,
) -> bool {
    let mut complete = true;
    for attr in attrs.iter().filter(|attr| attr.path() == &name) {
        if let Err(error) = attr.parse_nested_meta(&mut read) {
            cx.syn_error(error);
            complete = false;
        }
    }
    complete
}

/// Runs `read` on each item of an attribute macro's arguments; `false` as
/// [`each_in_attrs`].
pub(crate) fn each_in_args(
    cx: &Ctxt,
    args: TokenStream,
    read: impl FnMut(ParseNestedMeta<'_>) -> syn::Result<()>,
) -> bool {
    match syn::meta::parser(read).parse2(args) {
        Ok(()) => true,
        Err(error) => {
            cx.syn_error(error);
            false
        }
    }
}

/// Records an unknown key of `what` (with a hint and the accepted keys) and skips its value.
pub(crate) fn unknown(cx: &Ctxt, meta: &ParseNestedMeta<'_>, what: &str, keys: &[Symbol]) -> syn::Result<()> {
    let key = meta.path.to_token_stream().to_string().replace(' ', "");
    let keys: Vec<&str> = keys.iter().map(|key| key.0).collect();
    cx.error_spanned_by(&meta.path, suggest::unknown_key_message(what, &key, &keys));
    skip_value(meta.input)
}

/// Consumes whatever follows a key up to the next `,`: `= value`, `(...)` or nothing.
pub(crate) fn skip_value(input: ParseStream<'_>) -> syn::Result<()> {
    while !input.is_empty() && !input.peek(Token![,]) {
        input.parse::<TokenTree>()?;
    }
    Ok(())
}

/// The expression after `key =`, or a recorded "needs a value" error.
pub(crate) fn value(cx: &Ctxt, key: Symbol, meta: &ParseNestedMeta<'_>, example: &str) -> syn::Result<Option<Expr>> {
    if meta.input.peek(Token![=]) {
        Ok(Some(meta.value()?.parse()?))
    } else {
        cx.error_spanned_by(&meta.path, format!("`{key}` needs a value, e.g. `{example}`"));
        skip_value(meta.input)?;
        Ok(None)
    }
}

/// The literal an expression is, if any.
pub(crate) fn lit(expr: &Expr) -> Option<&Lit> {
    match expr {
        Expr::Lit(ExprLit { lit, .. }) => Some(lit),
        Expr::Group(group) => lit(&group.expr),
        _ => None,
    }
}

/// `key = "text"`.
pub(crate) fn string(cx: &Ctxt, key: Symbol, meta: &ParseNestedMeta<'_>, example: &str) -> syn::Result<Option<LitStr>> {
    let Some(expr) = value(cx, key, meta, example)? else { return Ok(None) };
    match lit(&expr) {
        Some(Lit::Str(string)) => Ok(Some(string.clone())),
        _ => {
            cx.error_spanned_by(&expr, format!("expected a string for `{key}`, e.g. `{example}`"));
            Ok(None)
        }
    }
}

/// `key = 12`, a positive integer that fits `N`.
pub(crate) fn positive_int<N>(
    cx: &Ctxt,
    key: Symbol,
    meta: &ParseNestedMeta<'_>,
    example: &str,
) -> syn::Result<Option<N>>
where
    N: std::str::FromStr + PartialOrd + Default,
    N::Err: std::fmt::Display,
{
    let Some(expr) = value(cx, key, meta, example)? else { return Ok(None) };
    let message = match lit(&expr) {
        Some(Lit::Int(int)) => match int.base10_parse::<N>() {
            Ok(value) if value > N::default() => return Ok(Some(value)),
            Ok(_) => format!("`{key}` must be at least 1"),
            Err(_) => format!("`{key}` is out of range"),
        },
        _ if matches!(expr, Expr::Unary(syn::ExprUnary { op: syn::UnOp::Neg(_), .. })) => {
            format!("`{key}` must be at least 1")
        }
        _ => format!("expected an integer for `{key}`, e.g. `{example}`"),
    };
    cx.error_spanned_by(&expr, message);
    Ok(None)
}

/// The bare flag `key`, or `key = true` / `key = false`.
pub(crate) fn flag(cx: &Ctxt, key: Symbol, meta: &ParseNestedMeta<'_>) -> syn::Result<Option<bool>> {
    if meta.input.peek(Token![=]) {
        let expr: Expr = meta.value()?.parse()?;
        match lit(&expr) {
            Some(Lit::Bool(flag)) => Ok(Some(flag.value)),
            _ => {
                cx.error_spanned_by(
                    &expr,
                    format!("expected `true` or `false` for `{key}`, e.g. `{key} = true` or just `{key}`"),
                );
                Ok(None)
            }
        }
    } else if meta.input.is_empty() || meta.input.peek(Token![,]) {
        Ok(Some(true))
    } else {
        cx.error_spanned_by(&meta.path, format!("expected `{key} = true` or just `{key}`"));
        skip_value(meta.input)?;
        Ok(None)
    }
}

/// `key = "field"` or `key = field`: a name as a string or a plain identifier.
pub(crate) fn name(cx: &Ctxt, key: Symbol, meta: &ParseNestedMeta<'_>, example: &str) -> syn::Result<Option<Name>> {
    let Some(expr) = value(cx, key, meta, example)? else { return Ok(None) };
    let name = expr_name(&expr);
    if name.is_none() {
        cx.error_spanned_by(&expr, format!("expected a field name for `{key}`, e.g. `{example}`"));
    }
    Ok(name)
}

/// The name an expression spells: a string literal or a plain identifier.
pub(crate) fn expr_name(expr: &Expr) -> Option<Name> {
    match expr {
        Expr::Path(path) if path.qself.is_none() && path.attrs.is_empty() => {
            path.path.get_ident().map(Name::from_ident)
        }
        _ => match lit(expr) {
            Some(Lit::Str(string)) => Some(Name { value: string.value(), span: string.span() }),
            _ => None,
        },
    }
}

/// `key = path::to::Item`; `what` says what the path names, e.g. "a serializer type".
pub(crate) fn path(
    cx: &Ctxt,
    key: Symbol,
    meta: &ParseNestedMeta<'_>,
    what: &str,
    example: &str,
) -> syn::Result<Option<Path>> {
    let Some(expr) = value(cx, key, meta, example)? else { return Ok(None) };
    match expr {
        Expr::Path(path) if path.qself.is_none() && path.attrs.is_empty() => Ok(Some(path.path)),
        other => {
            cx.error_spanned_by(&other, format!("expected a path to {what} for `{key}`, e.g. `{example}`"));
            Ok(None)
        }
    }
}
