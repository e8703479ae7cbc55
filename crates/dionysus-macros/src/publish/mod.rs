//! `#[derive(Publishable)]` with `#[publish(...)]` (one per topic) and an optional
//! `#[publishable(...)]` for model-level settings: parse into a typed model, check what can be
//! checked here, expand to an `impl Publishable` plus a registry entry.

mod ast;
mod expand;
mod parse;

use proc_macro2::TokenStream;

use crate::ctxt::{self, Ctxt};

pub(crate) fn derive(input: TokenStream) -> TokenStream {
    let cx = Ctxt::new();
    let input = match syn::parse2::<syn::DeriveInput>(input) {
        Ok(input) => input,
        Err(error) => return error.into_compile_error(),
    };
    let model = parse::model(&cx, &input);
    match (cx.check(), model) {
        (Ok(()), Some(model)) => expand::expand(&model),
        (Err(error), model) => ctxt::with_fallback(error, expand::fallback(&input, model.as_ref())),
        (Ok(()), None) => expand::fallback(&input, None),
    }
}
