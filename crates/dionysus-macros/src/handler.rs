//! `#[dionysus::consume(topic = "…", event = "…")]` on an `async fn(&ConsumedEvent) ->
//! dionysus::Result<()>`: keeps the function and registers it, through a small wrapper that
//! boxes its future, as a `HandlerDeclaration` in `inventory`, plus a topic reference.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{FnArg, ItemFn, Meta, Token};

use crate::attr::{self, Attr};
use crate::ctxt::{self, Ctxt};
use crate::suggest;
use crate::symbol::*;

const KEYS: &[&str] = &[TOPIC.0, EVENT.0];

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let cx = Ctxt::new();
    let function = match syn::parse2::<ItemFn>(item.clone()) {
        Ok(function) => Some(function),
        Err(_) => {
            cx.syn_error(syn::Error::new(
                Span::call_site(),
                "`#[dionysus::consume(...)]` goes on an `async fn(&dionysus::consumer::ConsumedEvent) -> dionysus::Result<()>`\n\
                 help: on a replica struct, use `#[derive(dionysus::Consume)]` with `#[consume(...)]`",
            ));
            None
        }
    };
    let mut topic = Attr::none(&cx, TOPIC);
    let mut event = Attr::none(&cx, EVENT);
    let mut unknown_key = false;
    match Punctuated::<Meta, Token![,]>::parse_terminated.parse2(args) {
        Ok(metas) => {
            for meta in &metas {
                let path = meta.path();
                if path == &TOPIC {
                    topic.set_opt(path, attr::get_lit_str(&cx, TOPIC, meta, r#"topic = "v3_rentals""#));
                } else if path == &EVENT {
                    event.set_opt(path, attr::get_lit_str(&cx, EVENT, meta, r#"event = "rental_updated""#));
                } else {
                    unknown_key = true;
                    cx.syn_error(syn::Error::new(
                        attr::key_span(meta),
                        suggest::unknown_key_message("`#[dionysus::consume(...)]`", &attr::key_of(meta), KEYS),
                    ));
                }
            }
        }
        Err(error) => cx.syn_error(error),
    }
    if let Some(function) = &function {
        let signature = &function.sig;
        if signature.asyncness.is_none() {
            cx.error_spanned_by(signature.fn_token, "a consume handler must be an `async fn`");
        }
        if !signature.generics.params.is_empty() {
            cx.error_spanned_by(&signature.generics, "a consume handler cannot have generic parameters");
        }
        match signature.inputs.first() {
            Some(FnArg::Receiver(receiver)) => {
                cx.error_spanned_by(receiver, "a consume handler is a free function, not a method");
            }
            None => cx.error_spanned_by(
                &signature.inputs,
                "a consume handler takes the event: `event: &dionysus::consumer::ConsumedEvent`",
            ),
            Some(FnArg::Typed(_)) if signature.inputs.len() > 1 => {
                cx.error_spanned_by(&signature.inputs, "a consume handler takes exactly one argument, the event")
            }
            Some(FnArg::Typed(_)) => {}
        }
    }
    let topic = topic.get();
    let event = event.get();
    if (topic.is_none() || event.is_none()) && !unknown_key {
        cx.syn_error(syn::Error::new(
            Span::call_site(),
            "missing `topic` or `event` in `#[dionysus::consume(...)]`\n\
             help: the correct format looks like `#[dionysus::consume(topic = \"v3_rentals\", event = \"rental_updated\")]`",
        ));
    }
    if let Err(error) = cx.check() {
        return ctxt::with_fallback(error, item);
    }
    let (Some(function), Some(topic), Some(event)) = (function, topic, event) else { return item };
    let name = &function.sig.ident;
    let name_str = name.to_string();
    let wrapper = format_ident!("__dionysus_consume_{}", name);
    quote! {
        #function

        #[doc(hidden)]
        #[allow(non_snake_case)]
        fn #wrapper<'a>(
            event: &'a ::dionysus::__private::ConsumedEvent,
        ) -> ::dionysus::__private::HandlerFuture<'a> {
            ::dionysus::__private::box_handler(#name(event))
        }

        ::dionysus::__private::inventory::submit! {
            ::dionysus::__private::HandlerEntry(&::dionysus::__private::HandlerDeclaration {
                topic: #topic,
                event: #event,
                handler: #wrapper,
                declared_by: ::core::concat!(::core::module_path!(), "::", #name_str),
                location: ::core::concat!(::core::file!(), ":", ::core::line!()),
            })
        }

        ::dionysus::__private::inventory::submit! {
            ::dionysus::__private::TopicReferenceEntry(&::dionysus::__private::TopicReference {
                topic: #topic,
                by: ::core::concat!("consume handler ", ::core::module_path!(), "::", #name_str),
                location: ::core::concat!(::core::file!(), ":", ::core::line!()),
            })
        }
    }
}
