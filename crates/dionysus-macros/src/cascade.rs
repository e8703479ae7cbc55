//! `cascade(Rental -> Booking)` and `cascade(Rental -> Booking, from = "rental_id")`, a key
//! shared by `#[consume(...)]` on a replica struct and `#[dionysus::consume(...)]` on a
//! handler: reading it (both sides are paths to publishable models, as in `with(...)`) and
//! the registry entry it becomes. The compiler checks what needs types, each error on the
//! token that is wrong: an unknown model, a model that is not publishable, and two models
//! with no diesel `belongs_to` between them (the relation probe `with(...)` uses).

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{LitStr, Path, Token};

use crate::attr;
use crate::ctxt::Ctxt;
use crate::symbol::{CASCADE, FROM};

const EXAMPLE: &str = "cascade(Rental -> Booking)";

/// One `cascade(Parent -> Related, from = "attribute")`.
pub(crate) struct Cascade {
    pub(crate) parent: Path,
    pub(crate) related: Path,
    pub(crate) from: Option<LitStr>,
    /// The `cascade` key.
    pub(crate) span: Span,
}

/// Reads the value of a `cascade` key; a malformed one is recorded and `None`.
pub(crate) fn parse(cx: &Ctxt, meta: &ParseNestedMeta<'_>) -> syn::Result<Option<Cascade>> {
    let wrong = |at: &dyn ToTokens, what: &str| {
        cx.error_spanned_by(
            at.to_token_stream(),
            format!(
                "{what}\nhelp: the correct format looks like `{EXAMPLE}` (the publishable model whose ids \
                 the batch carries, then the publishable model whose records to republish), optionally \
                 with `from = \"rental_id\"`"
            ),
        );
    };
    if !meta.input.peek(syn::token::Paren) {
        wrong(&meta.path, "`cascade` needs the two models");
        attr::skip_value(meta.input)?;
        return Ok(None);
    }
    let content;
    syn::parenthesized!(content in meta.input);
    let parent: Path = content.parse()?;
    if !content.peek(Token![->]) {
        let at: TokenStream = if content.is_empty() { parent.to_token_stream() } else { content.parse()? };
        wrong(&at, "expected `->` between the two models");
        return Ok(None);
    }
    content.parse::<Token![->]>()?;
    let related: Path = content.parse()?;
    let mut from = None;
    let mut valid = model_path(cx, &parent, "the model whose ids the batch carries")
        & model_path(cx, &related, "the model whose related records to republish");
    while !content.is_empty() {
        content.parse::<Token![,]>()?;
        if content.is_empty() {
            break;
        }
        let key: syn::Ident = content.parse()?;
        if key != FROM.0 {
            cx.error_spanned_by(&key, format!("unknown key `{key}` in `cascade(...)`; the one key is `from`"));
            valid = false;
            attr::skip_value(&content)?;
            continue;
        }
        content.parse::<Token![=]>()?;
        let value: LitStr = content.parse()?;
        if value.value().is_empty() {
            cx.error_spanned_by(&value, "`from` names the attribute holding the ids and cannot be empty");
            valid = false;
        } else if from.is_some() {
            cx.error_spanned_by(&key, "duplicate key `from`: it may be given once");
            valid = false;
        } else {
            from = Some(value);
        }
    }
    Ok(valid.then(|| Cascade { parent, related, from, span: meta.path.span() }))
}

/// Whether `path` can name a model type; a lowercase single name (an association or a table,
/// as in Ruby's `:bookings`) is recorded with the fix.
fn model_path(cx: &Ctxt, path: &Path, role: &str) -> bool {
    let Some(ident) = path.get_ident() else { return true };
    if ident.to_string().starts_with(|c: char| c.is_lowercase()) {
        cx.error_spanned_by(
            ident,
            format!(
                "`{ident}` is not a model: `cascade(...)` names {role} by its type, as `with(...)` does\n\
                 help: the correct format looks like `{EXAMPLE}`; the association is diesel's \
                 `#[diesel(belongs_to(Rental))]` on `Booking`"
            ),
        );
        return false;
    }
    true
}

/// Records the second of two cascades between the same models from the same ids.
pub(crate) fn check_duplicates(cx: &Ctxt, cascades: &[Cascade]) {
    let identity = |cascade: &Cascade| {
        (
            cascade.parent.to_token_stream().to_string(),
            cascade.related.to_token_stream().to_string(),
            cascade.from.as_ref().map(LitStr::value),
        )
    };
    for (index, cascade) in cascades.iter().enumerate() {
        if cascades[..index].iter().any(|earlier| identity(earlier) == identity(cascade)) {
            cx.syn_error(syn::Error::new(cascade.span, format!("duplicate `{CASCADE}`: this one is declared already")));
        }
    }
}

/// Where a cascade's ids come from: the replica's model, or the handler's event.
pub(crate) enum Source<'a> {
    /// A replica struct: the ids of the records of its model.
    Replica { model: &'a LitStr },
    /// A handler function: the ids of the records of its event.
    Handler { event: &'a LitStr },
}

/// The registry entries of `cascades`, declared by the item `name` reading `topic`: a relation
/// function per cascade (where the compiler checks the models) and an `inventory` entry.
pub(crate) fn expand(cascades: &[Cascade], topic: &LitStr, source: Source<'_>, name: &str) -> TokenStream {
    let none = quote!(::core::option::Option::None);
    let (model, event, by_replica) = match source {
        Source::Replica { model } => (quote!(::core::option::Option::Some(#model)), none.clone(), true),
        Source::Handler { event } => (none.clone(), quote!(::core::option::Option::Some(#event)), false),
    };
    let entries = cascades.iter().enumerate().map(|(index, cascade)| {
        let Cascade { parent, related, from, span } = cascade;
        let relation = format_ident!("__dionysus_cascade_{}", index);
        let probe = crate::publish::relation_probe(related, parent);
        let from = match from {
            Some(from) => quote!(::core::option::Option::Some(#from)),
            None => none.clone(),
        };
        let parent_entry = quote_spanned!(parent.span()=> __d::model_entry::<#parent>);
        let related_entry = quote_spanned!(related.span()=> __d::model_entry::<#related>);
        let location = quote_spanned!(*span=> ::core::concat!(::core::file!(), ":", ::core::line!()));
        quote! {
            fn #relation() -> __d::Relation { #probe }

            __d::inventory::submit! {
                __d::CascadeEntry(&__d::CascadeDeclaration {
                    topic: #topic,
                    model: #model,
                    event: #event,
                    from: #from,
                    parent: #parent_entry,
                    related: #related_entry,
                    relation: #relation,
                    by_replica: #by_replica,
                    declared_by: ::core::concat!(::core::module_path!(), "::", #name),
                    location: #location,
                })
            }
        }
    });
    quote!(#(#entries)*)
}
