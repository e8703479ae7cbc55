//! Error collection: every check records into a [`Ctxt`] instead of returning early, so one
//! compilation shows every mistake in an attribute at once.

use std::cell::RefCell;
use std::fmt::Display;

use proc_macro2::TokenStream;
use quote::ToTokens;

/// Collects `syn::Error`s; [`Ctxt::check`] combines them into one.
#[derive(Default)]
pub(crate) struct Ctxt {
    errors: RefCell<Option<syn::Error>>,
}

impl Ctxt {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Records an error spanned on `tokens`.
    pub(crate) fn error_spanned_by<T: ToTokens, M: Display>(&self, tokens: T, message: M) {
        self.syn_error(syn::Error::new_spanned(tokens.into_token_stream(), message));
    }

    /// Records an already built error.
    pub(crate) fn syn_error(&self, error: syn::Error) {
        let mut errors = self.errors.borrow_mut();
        match errors.as_mut() {
            Some(existing) => existing.combine(error),
            None => *errors = Some(error),
        }
    }

    /// `Ok` when nothing was recorded, otherwise every error combined.
    pub(crate) fn check(self) -> Result<(), syn::Error> {
        match self.errors.into_inner() {
            Some(errors) => Err(errors),
            None => Ok(()),
        }
    }
}

/// Turns a combined error into `compile_error!` invocations followed by `fallback`.
pub(crate) fn with_fallback(error: syn::Error, fallback: TokenStream) -> TokenStream {
    let mut tokens = error.into_compile_error();
    tokens.extend(fallback);
    tokens
}
