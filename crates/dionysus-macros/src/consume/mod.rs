//! `#[derive(Consume)]`: [`parse`] the struct's `#[consume(...)]` and `#[diesel(...)]`
//! attributes and its fields into the typed [`ast`], [`validate`] the rules across them, then
//! [`expand`] a valid replica into an `impl Replica` with a constant descriptor and its
//! registry entry, or emit the errors with a placeholder impl ([`fallback`]).

mod ast;
mod expand;
mod parse;
mod validate;

use proc_macro2::TokenStream;
use quote::quote;
use syn::{DeriveInput, Ident};

use crate::ctxt::{self, Ctxt};

pub(crate) fn derive(input: TokenStream) -> TokenStream {
    let input = match syn::parse2::<DeriveInput>(input) {
        Ok(input) => input,
        Err(error) => return error.into_compile_error(),
    };
    let cx = Ctxt::new();
    let replica = parse::replica(&cx, &input);
    if let Some(replica) = &replica {
        validate::check(&cx, replica);
    }
    let stub = || if input.generics.params.is_empty() { fallback(&input.ident) } else { TokenStream::new() };
    match (cx.check(), replica) {
        (Ok(()), Some(replica)) => expand::expand(&replica),
        (Err(error), _) => ctxt::with_fallback(error, stub()),
        (Ok(()), None) => stub(),
    }
}

/// On error: a placeholder `Replica` impl (never registered), so uses of the type add no
/// errors to the real one.
fn fallback(ident: &Ident) -> TokenStream {
    quote! {
        impl ::dionysus::__private::Replica for #ident {
            const DESCRIPTOR: &'static ::dionysus::__private::ReplicaDescriptor =
                &::dionysus::__private::ReplicaDescriptor::INVALID;
        }
    }
}
