//! `#[dionysus::consume(topic = "…", event = "…")]` on an `async fn(&ConsumedEvent) ->
//! dionysus::Result<()>`: reads the arguments (in the same style as every other macro) and
//! checks the signature, then keeps the function and registers it, through a small wrapper
//! that boxes its future, as a `HandlerDeclaration` in `inventory`, plus a topic reference.
//! On error it emits the errors and the function unchanged.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::{FnArg, ItemFn, LitStr};

use crate::attr::{self, Attr};
use crate::ctxt::{self, Ctxt};
use crate::symbol::*;

const KEYS: &[Symbol] = &[TOPIC, EVENT];

/// A handler declaration.
struct Handler {
    function: ItemFn,
    topic: LitStr,
    event: LitStr,
}

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let cx = Ctxt::new();
    let handler = parse(&cx, args, item.clone());
    if let Some(handler) = &handler {
        check_signature(&cx, &handler.function);
    }
    match (cx.check(), handler) {
        (Ok(()), Some(handler)) => expand_valid(&handler),
        (Err(error), _) => ctxt::with_fallback(error, item),
        (Ok(()), None) => item,
    }
}

fn parse(cx: &Ctxt, args: TokenStream, item: TokenStream) -> Option<Handler> {
    let function = match syn::parse2::<ItemFn>(item) {
        Ok(function) => Some(function),
        Err(_) => {
            cx.syn_error(syn::Error::new(
                Span::call_site(),
                "`#[dionysus::consume(...)]` goes on an `async fn(&dionysus::consumer::ConsumedEvent) -> \
                 dionysus::Result<()>`\n\
                 help: on a replica struct, use `#[derive(dionysus::Consume)]` with `#[consume(...)]`",
            ));
            None
        }
    };
    let mut topic = Attr::none(cx, TOPIC);
    let mut event = Attr::none(cx, EVENT);
    let mut unknown_key = false;
    let complete = attr::each_in_args(cx, args, |meta| {
        if meta.path == TOPIC {
            topic.set_opt(&meta.path, attr::string(cx, TOPIC, &meta, r#"topic = "v3_rentals""#)?);
        } else if meta.path == EVENT {
            event.set_opt(&meta.path, attr::string(cx, EVENT, &meta, r#"event = "rental_updated""#)?);
        } else {
            unknown_key = true;
            attr::unknown(cx, &meta, "`#[dionysus::consume(...)]`", KEYS)?;
        }
        Ok(())
    });
    let (topic, event) = (topic.get(), event.get());
    if (topic.is_none() || event.is_none()) && !unknown_key && complete {
        cx.syn_error(syn::Error::new(
            Span::call_site(),
            "missing `topic` or `event` in `#[dionysus::consume(...)]`\n\
             help: the correct format looks like `#[dionysus::consume(topic = \"v3_rentals\", event = \"rental_updated\")]`",
        ));
    }
    Some(Handler { function: function?, topic: topic?, event: event? })
}

fn check_signature(cx: &Ctxt, function: &ItemFn) {
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

fn expand_valid(handler: &Handler) -> TokenStream {
    let Handler { function, topic, event } = handler;
    let name = &function.sig.ident;
    let name_str = name.to_string();
    quote! {
        #function

        #[doc(hidden)]
        const _: () = {
            use ::dionysus::__private as __d;

            fn __dionysus_handler<'a>(event: &'a __d::ConsumedEvent) -> __d::HandlerFuture<'a> {
                __d::box_handler(#name(event))
            }

            __d::inventory::submit! {
                __d::HandlerEntry(&__d::HandlerDeclaration {
                    topic: #topic,
                    event: #event,
                    handler: __dionysus_handler,
                    declared_by: ::core::concat!(::core::module_path!(), "::", #name_str),
                    location: ::core::concat!(::core::file!(), ":", ::core::line!()),
                })
            }

            __d::inventory::submit! {
                __d::TopicReferenceEntry(&__d::TopicReference {
                    topic: #topic,
                    by: ::core::concat!("consume handler ", ::core::module_path!(), "::", #name_str),
                    location: ::core::concat!(::core::file!(), ":", ::core::line!()),
                })
            }
        };
    }
}
