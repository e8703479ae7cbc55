//! The typed model of a `#[derive(Publishable)]`, keeping the original syn nodes for spans.

use proc_macro2::Span;
use syn::{Ident, LitStr, Path, Type};

/// A validated publishable model.
pub(crate) struct Model {
    pub(crate) ident: Ident,
    /// Wire name (`model_name`, default: the struct's name).
    pub(crate) model_name: String,
    /// Diesel table module.
    pub(crate) table: Path,
    /// Primary-key column and the field holding it.
    pub(crate) primary_key: Field,
    /// Every field, in declaration order.
    pub(crate) fields: Vec<Field>,
    pub(crate) soft_delete: SoftDelete,
    pub(crate) publish_updates_after_soft_delete: bool,
    pub(crate) publications: Vec<Publication>,
}

/// A struct field and the column it maps to.
#[derive(Clone)]
pub(crate) struct Field {
    pub(crate) ident: Ident,
    pub(crate) column: String,
    pub(crate) ty: Type,
}

pub(crate) enum SoftDelete {
    Configured,
    Column(String),
    Disabled,
}

/// One `#[publish(...)]`.
pub(crate) struct Publication {
    pub(crate) topic: TopicRef,
    pub(crate) partition_key: PartitionKey,
    pub(crate) with: Vec<Path>,
    pub(crate) observe: Vec<Observe>,
    pub(crate) serializer: Option<Path>,
    /// The `publish` token, for `file!()`/`line!()`.
    pub(crate) span: Span,
}

pub(crate) enum TopicRef {
    Name(LitStr),
    Type(Path),
}

impl TopicRef {
    /// A key to detect two `#[publish]` on one topic.
    pub(crate) fn identity(&self) -> String {
        match self {
            TopicRef::Name(name) => name.value(),
            TopicRef::Type(path) => quote::quote!(#path).to_string(),
        }
    }
}

pub(crate) enum PartitionKey {
    Inherit,
    Attribute(String),
    Resolver(Path),
}

/// `observe(Model, columns(a, b), via = "column")`.
pub(crate) struct Observe {
    pub(crate) model: Path,
    pub(crate) columns: Vec<Ident>,
    /// A column of this model holding the observed model's key.
    pub(crate) via: Option<String>,
}
