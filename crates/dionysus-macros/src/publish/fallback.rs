//! What a failed `#[derive(Publishable)]` emits besides its errors: a stub `impl
//! Publishable` (as thiserror does for its derive), so code that uses the model, or names it
//! in another model's `with(...)`/`observe(...)`, adds no "trait not implemented" errors to
//! the real one. The stub is never registered and its methods are never compiled into a
//! program, since the errors stop the build.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Data, DeriveInput, Ident};

/// The stub, for a struct without generic parameters (anything else gets none).
pub(crate) fn for_input(input: &DeriveInput) -> TokenStream {
    match &input.data {
        Data::Struct(_) if input.generics.params.is_empty() => stub(&input.ident),
        _ => TokenStream::new(),
    }
}

pub(crate) fn stub(ident: &Ident) -> TokenStream {
    quote! {
        #[doc(hidden)]
        const _: () = {
            use ::dionysus::__private as __d;

            impl __d::Publishable for #ident {
                const MODEL: __d::ModelEntry = __d::ModelEntry::INVALID;
                const PUBLICATIONS: &'static [__d::Publication] = &[];

                fn primary_key(&self) -> ::std::string::String {
                    ::core::unreachable!()
                }

                fn attribute(&self, _: &str) -> ::core::option::Option<__d::serde_json::Value> {
                    ::core::unreachable!()
                }

                fn load_source() -> __d::LoadSource {
                    ::core::unreachable!()
                }
            }
        };
    }
}
