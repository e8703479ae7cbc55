//! `#[derive(Publishable)]` with `#[publish(...)]` (one per topic) and an optional
//! `#[publishable(...)]` for model-level settings: [`parse`] into the typed [`ast`],
//! [`validate`] the rules across fields and attributes, then [`expand`] a valid model into an
//! `impl Publishable` plus a registry entry, or emit the errors with a [`fallback`] stub.

mod ast;
mod expand;
mod fallback;
mod parse;
mod validate;

use proc_macro2::TokenStream;

pub(crate) use expand::relation_probe;

use crate::ctxt::{self, Ctxt};

pub(crate) fn derive(input: TokenStream) -> TokenStream {
    let input = match syn::parse2::<syn::DeriveInput>(input) {
        Ok(input) => input,
        Err(error) => return error.into_compile_error(),
    };
    let cx = Ctxt::new();
    let model = parse::model(&cx, &input);
    if let Some(model) = &model {
        validate::check(&cx, model);
    }
    match (cx.check(), model) {
        (Ok(()), Some(model)) => expand::expand(&model),
        (Err(error), _) => ctxt::with_fallback(error, fallback::for_input(&input)),
        (Ok(()), None) => fallback::for_input(&input),
    }
}
