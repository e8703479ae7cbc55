//! The typed model of a `#[derive(Publishable)]` as written, keeping the original syn nodes
//! and spans. Names that refer to fields are kept as written; `validate` checks them and
//! `expand` trusts them.

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::{Generics, Ident, LitStr, Path, Type};

use crate::attr::Name;
use crate::avro::SchemaRef;

/// A publishable model.
pub(crate) struct Model {
    pub(crate) ident: Ident,
    pub(crate) generics: Generics,
    /// Wire name (`model_name`, default: the struct's name).
    pub(crate) model_name: String,
    /// Diesel table module (`#[diesel(table_name = ...)]`, default: diesel's naming).
    pub(crate) table: Path,
    /// The primary key columns (`#[diesel(primary_key(...))]`, default: `id`).
    pub(crate) primary_key: PrimaryKey,
    /// Every field, in declaration order.
    pub(crate) fields: Vec<Field>,
    pub(crate) soft_delete: SoftDelete,
    pub(crate) publish_updates_after_soft_delete: bool,
    pub(crate) publications: Vec<Publication>,
}

impl Model {
    /// The field holding a column.
    pub(crate) fn field(&self, column: &str) -> Option<&Field> {
        self.fields.iter().find(|field| field.column == column)
    }

    /// The field of a single-column primary key.
    pub(crate) fn primary_key_field(&self) -> Option<&Field> {
        match self.primary_key.columns.as_slice() {
            [column] => self.field(&column.value),
            _ => None,
        }
    }
}

/// A struct field and the column it maps to.
pub(crate) struct Field {
    pub(crate) ident: Ident,
    pub(crate) column: String,
    pub(crate) ty: Type,
}

/// The primary key's columns, and where they were named (`None`: the default `id`).
pub(crate) struct PrimaryKey {
    pub(crate) columns: Vec<Name>,
    pub(crate) tokens: Option<TokenStream>,
}

pub(crate) enum SoftDelete {
    /// Soft-deletable when the model has the configured column.
    Configured,
    Column(Name),
    Disabled,
}

/// One `#[publish(...)]`.
pub(crate) struct Publication {
    pub(crate) topic: TopicRef,
    pub(crate) partition_key: PartitionKey,
    /// `partition_key_to_i`: the gem's `to_i` rule on any field type, by choice.
    pub(crate) partition_key_to_i: Option<Span>,
    pub(crate) with: Vec<Path>,
    pub(crate) observe: Vec<Observe>,
    pub(crate) serializer: Option<Path>,
    /// `schema = "com.example.Rental"`: the topic is an Avro topic with this record schema,
    /// which the model's fields are checked against.
    pub(crate) schema: Option<SchemaRef>,
    /// `delayed = …`: the chain of delayed copies (empty: none).
    pub(crate) delayed: Vec<crate::delay::Delay>,
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

    /// The topic as written, for errors.
    pub(crate) fn tokens(&self) -> TokenStream {
        match self {
            TopicRef::Name(name) => name.to_token_stream(),
            TopicRef::Type(path) => path.to_token_stream(),
        }
    }
}

pub(crate) enum PartitionKey {
    /// Not given: the topic's `partition_key`, else the configured default.
    Inherit,
    /// `partition_key = field`.
    Field(Name),
    /// `partition_key_with = path::to::fn`.
    Resolver(Path),
}

/// `observe(Model, columns(a, b), via = "column")`.
pub(crate) struct Observe {
    pub(crate) model: Path,
    pub(crate) columns: Vec<Ident>,
    /// A column of this model holding the observed model's key.
    pub(crate) via: Option<Name>,
}
