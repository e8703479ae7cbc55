//! `#[dionysus::consume(topic = "…", event = "…", in_transaction, error_events)]` (or
//! `checkpoint`, with an optional `on_failure = "record"`; any number of
//! `cascade(Rental -> Booking)`, see `cascade`) on an async handler function: reads the arguments (in the same style as every other macro), checks the
//! function's shape (one error on the offending parameter, naming the accepted shapes), then
//! keeps the function and registers a wrapper that builds its input from the context, as a
//! `HandlerDeclaration` in `inventory`, plus a topic reference. On error it emits the errors
//! and the function unchanged.
//!
//! Accepted shapes, told apart by how the parameters are written:
//! * `(ctx: &mut Context<'_>, rental: T)`: called once per record of the event;
//! * `(ctx: &mut Context<'_>, rentals: Vec<T>)`: called once with every record;
//! * `(ctx: &mut Context<'_>)`: called once per event;
//! * `(event: &ConsumedEvent)`: the untyped form, called once per event.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, GenericArgument, ItemFn, LitStr, PathArguments, ReturnType, Type};

use crate::attr::{self, Attr};
use crate::ctxt::{self, Ctxt};
use crate::symbol::*;

const KEYS: &[Symbol] = &[TOPIC, EVENT, IN_TRANSACTION, CHECKPOINT, ON_FAILURE, ERROR_EVENTS, CASCADE];

/// The failure policies `on_failure` accepts, and the variant each names.
const POLICIES: &[(&str, &str)] = &[("block", "Block"), ("dead_letter", "DeadLetter"), ("record", "Record")];

/// The shapes a handler may have, as said in every signature error.
const SHAPES: &str = "help: a consume handler is one of
    async fn f(ctx: &mut dionysus::Context<'_>, rental: Rental) -> Result<(), E>        // once per record
    async fn f(ctx: &mut dionysus::Context<'_>, rentals: Vec<Rental>) -> Result<(), E>  // once, all records
    async fn f(ctx: &mut dionysus::Context<'_>) -> Result<(), E>
    async fn f(event: &dionysus::consumer::ConsumedEvent) -> Result<(), E>
where `Rental: serde::Deserialize` and `E` is an error type (`dionysus::Error`, any std error)";

/// A handler declaration.
struct Handler {
    function: ItemFn,
    topic: LitStr,
    event: LitStr,
    in_transaction: bool,
    checkpoint: bool,
    /// The variant of `FailurePolicy` named by `on_failure`.
    on_failure: Option<syn::Ident>,
    error_events: bool,
    /// `cascade(Rental -> Booking)`: related records republished from the ids of the
    /// event's records.
    cascades: Vec<crate::cascade::Cascade>,
}

/// How the function takes its input.
enum Input<'a> {
    /// `(event: &ConsumedEvent)`.
    Event,
    /// `(ctx: &mut Context<'_>)`.
    Context,
    /// `(ctx, record: T)`, once per record.
    Record(&'a Type),
    /// `(ctx, records: Vec<T>)`.
    Records(&'a Type),
}

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let cx = Ctxt::new();
    let handler = parse(&cx, args, item.clone());
    let input = handler.as_ref().and_then(|handler| check_signature(&cx, &handler.function));
    match (cx.check(), &handler, input) {
        (Ok(()), Some(handler), Some(input)) => expand_valid(handler, &input),
        (Err(error), _, _) => ctxt::with_fallback(error, item),
        (Ok(()), _, _) => item,
    }
}

fn parse(cx: &Ctxt, args: TokenStream, item: TokenStream) -> Option<Handler> {
    let function = match syn::parse2::<ItemFn>(item) {
        Ok(function) => Some(function),
        Err(_) => {
            cx.syn_error(syn::Error::new(
                Span::call_site(),
                format!(
                    "`#[dionysus::consume(...)]` goes on an async handler function\n{SHAPES}\n\
                     help: on a replica struct, use `#[derive(dionysus::Consume)]` with `#[consume(...)]`"
                ),
            ));
            None
        }
    };
    let mut topic = Attr::none(cx, TOPIC);
    let mut event = Attr::none(cx, EVENT);
    let mut in_transaction = Attr::none(cx, IN_TRANSACTION);
    let mut checkpoint = Attr::none(cx, CHECKPOINT);
    let mut on_failure = Attr::none(cx, ON_FAILURE);
    let mut error_events = Attr::none(cx, ERROR_EVENTS);
    let mut cascades = Vec::new();
    let mut unknown_key = false;
    let complete = attr::each_in_args(cx, args, |meta| {
        if meta.path == TOPIC {
            topic.set_opt(&meta.path, attr::string(cx, TOPIC, &meta, r#"topic = "v3_rentals""#)?);
        } else if meta.path == EVENT {
            event.set_opt(&meta.path, attr::string(cx, EVENT, &meta, r#"event = "rental_updated""#)?);
        } else if meta.path == IN_TRANSACTION {
            in_transaction.set_opt(&meta.path, attr::flag(cx, IN_TRANSACTION, &meta)?);
        } else if meta.path == CHECKPOINT {
            checkpoint.set_opt(&meta.path, attr::flag(cx, CHECKPOINT, &meta)?);
        } else if meta.path == ON_FAILURE {
            let Some(policy) = attr::string(cx, ON_FAILURE, &meta, r#"on_failure = "record""#)? else { return Ok(()) };
            match POLICIES.iter().find(|(name, _)| *name == policy.value()) {
                Some((_, variant)) => on_failure.set(&meta.path, syn::Ident::new(variant, policy.span())),
                None => cx.error_spanned_by(
                    &policy,
                    format!(
                        "unknown failure policy `{}`\nhelp: `on_failure` is one of \"block\", \"dead_letter\", \"record\"",
                        policy.value()
                    ),
                ),
            }
        } else if meta.path == ERROR_EVENTS {
            error_events.set_opt(&meta.path, attr::flag(cx, ERROR_EVENTS, &meta)?);
        } else if meta.path == CASCADE {
            cascades.extend(crate::cascade::parse(cx, &meta)?);
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
    crate::cascade::check_duplicates(cx, &cascades);
    let checkpoint = checkpoint.get().unwrap_or(false);
    let on_failure = on_failure.get();
    if let (Some(policy), false) = (&on_failure, checkpoint) {
        cx.error_spanned_by(
            policy,
            "`on_failure` applies to checkpointed handlers\nhelp: add `checkpoint`: `#[dionysus::consume(topic = \"…\", event = \"…\", checkpoint, on_failure = \"record\")]`",
        );
    }
    Some(Handler {
        function: function?,
        topic: topic?,
        event: event?,
        in_transaction: in_transaction.get().unwrap_or(false) || checkpoint,
        checkpoint,
        on_failure,
        error_events: error_events.get().unwrap_or(false),
        cascades,
    })
}

/// Checks the function's shape; `None` when an error was recorded.
fn check_signature<'a>(cx: &Ctxt, function: &'a ItemFn) -> Option<Input<'a>> {
    let signature = &function.sig;
    let mut valid = true;
    let mut fail = |tokens: &dyn quote::ToTokens, message: String| {
        cx.error_spanned_by(tokens.to_token_stream(), format!("{message}\n{SHAPES}"));
        valid = false;
    };
    if signature.asyncness.is_none() {
        fail(&signature.fn_token, "a consume handler must be an `async fn`".to_owned());
    }
    if !signature.generics.params.is_empty() {
        fail(&signature.generics, "a consume handler cannot have generic parameters".to_owned());
    }
    if let ReturnType::Default = signature.output {
        fail(&signature.ident, "a consume handler returns `Result<(), E>`".to_owned());
    }
    let mut inputs = signature.inputs.iter();
    let input = match inputs.next() {
        None => {
            fail(&signature.ident, "a consume handler takes the context: `ctx: &mut dionysus::Context<'_>`".to_owned());
            None
        }
        Some(FnArg::Receiver(receiver)) => {
            fail(receiver, "a consume handler is a free function, not a method".to_owned());
            None
        }
        Some(FnArg::Typed(first)) => match &*first.ty {
            Type::Reference(reference) if reference.mutability.is_some() => match inputs.next() {
                None => Some(Input::Context),
                Some(FnArg::Typed(second)) => match &*second.ty {
                    Type::Reference(_) => {
                        fail(&second.ty, "a consume handler takes its record by value: `rental: Rental`".to_owned());
                        None
                    }
                    ty => Some(vec_item(ty).map_or(Input::Record(ty), Input::Records)),
                },
                Some(receiver) => {
                    fail(receiver, "a consume handler is a free function, not a method".to_owned());
                    None
                }
            },
            Type::Reference(_) => Some(Input::Event),
            ty if last_segment_is(ty, "ConsumedEvent") => {
                fail(
                    ty,
                    "a consume handler takes the event by reference: `event: &dionysus::consumer::ConsumedEvent`"
                        .to_owned(),
                );
                None
            }
            _ => {
                fail(first, "a consume handler takes the context first: `ctx: &mut dionysus::Context<'_>`".to_owned());
                None
            }
        },
    };
    let expected = match input {
        Some(Input::Event | Input::Context) => 1,
        _ => 2,
    };
    if let Some(extra) = signature.inputs.iter().nth(expected) {
        fail(extra, format!("a consume handler of this shape takes {expected} parameter(s); this one is extra"));
    }
    if valid {
        input
    } else {
        None
    }
}

/// `T` of a parameter written `Vec<T>`.
fn vec_item(ty: &Type) -> Option<&Type> {
    let Type::Path(path) = ty else { return None };
    let segment = path.path.segments.last()?;
    if segment.ident != "Vec" {
        return None;
    }
    let PathArguments::AngleBracketed(arguments) = &segment.arguments else { return None };
    match arguments.args.first() {
        Some(GenericArgument::Type(item)) if arguments.args.len() == 1 => Some(item),
        _ => None,
    }
}

fn last_segment_is(ty: &Type, name: &str) -> bool {
    matches!(ty, Type::Path(path) if path.path.segments.last().is_some_and(|segment| segment.ident == name))
}

fn expand_valid(handler: &Handler, input: &Input<'_>) -> TokenStream {
    let Handler { function, topic, event, in_transaction, checkpoint, on_failure, error_events, cascades } = handler;
    let on_failure = match on_failure {
        Some(variant) => quote! { ::core::option::Option::Some(__d::FailurePolicy::#variant) },
        None => quote! { ::core::option::Option::None },
    };
    let name = &function.sig.ident;
    let name_str = name.to_string();
    let cascades = crate::cascade::expand(cascades, topic, crate::cascade::Source::Handler { event }, &name_str);
    let output_span = match &function.sig.output {
        ReturnType::Type(_, ty) => ty.span(),
        ReturnType::Default => name.span(),
    };
    // The output check is spanned on the return type, so a wrong one is reported there.
    let finish = |call: TokenStream| {
        let convert = quote_spanned! {output_span=> __d::HandlerOutput::into_handler_result(output, &mut *ctx)};
        quote! {{
            let output = #call.await;
            #convert
        }}
    };
    let body = match input {
        Input::Event => finish(quote! { #name(ctx.event()) }),
        Input::Context => finish(quote! { #name(&mut *ctx) }),
        Input::Record(ty) => {
            let call = finish(quote! { #name(&mut *ctx, record) });
            let records = quote_spanned! {ty.span()=> __d::records_as::<#ty>(ctx.event())};
            quote! {
                for record in #records? {
                    #call?;
                }
                ::core::result::Result::Ok(())
            }
        }
        Input::Records(ty) => {
            let call = finish(quote! { #name(&mut *ctx, records) });
            let records = quote_spanned! {ty.span()=> __d::records_as::<#ty>(ctx.event())};
            quote! {
                let records = #records?;
                #call
            }
        }
    };
    quote! {
        #function

        #[doc(hidden)]
        const _: () = {
            use ::dionysus::__private as __d;

            fn __dionysus_handler<'a, 'b>(ctx: &'a mut __d::Context<'b>) -> __d::HandlerFuture<'a> {
                __d::box_handler(async move { #body })
            }

            __d::inventory::submit! {
                __d::HandlerEntry(&__d::HandlerDeclaration {
                    topic: #topic,
                    event: #event,
                    handler: __dionysus_handler,
                    in_transaction: #in_transaction,
                    checkpoint: #checkpoint,
                    on_failure: #on_failure,
                    error_events: #error_events,
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

            #cascades
        };
    }
}
