//! Serializers: how one record (and its sideloads) becomes the JSON object in a message's
//! `data`. [`DefaultSerializer`] writes the record's serde fields, `links`, then each sideload;
//! `#[publish(serializer = ...)]` names another [`Serializer`].

use serde_json::Value;

use super::publishable::Publishable;
use crate::registry::model::Record;
pub use crate::wire::record::{SerializeError, Sideload, Sideloads};

use crate::wire::record::kind;

/// Loading a record's `with(...)` sideloads failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SideloadError {
    /// The query failed.
    #[error("loading the `with({dependency})` sideloads of {model}")]
    Load {
        /// The model whose records get the sideloads.
        model: &'static str,
        /// The sideloaded model.
        dependency: &'static str,
        /// diesel's error.
        #[source]
        source: diesel::result::Error,
    },
    /// A sideloaded record could not be serialized.
    #[error(transparent)]
    Serialize(#[from] SerializeError),
}

/// Turns one record and its sideloads into the JSON object placed in a message's `data`.
///
/// Implement it on a unit struct and name it with `#[publish(serializer = MySerializer)]`.
pub trait Serializer<T>: Default + Send + Sync + 'static {
    /// The record's JSON object.
    fn serialize(&self, record: &T, sideloads: &Sideloads) -> Result<Value, SerializeError>;
}

/// The default serializer: the record's serde fields in declaration order, then `"links"`,
/// then each sideload, the shape of dionysus-rb's ModelSerializer (W-9). Timestamps are
/// written with milliseconds.
#[derive(Debug, Default, Clone, Copy)]
pub struct DefaultSerializer;

impl<T: Publishable> Serializer<T> for DefaultSerializer {
    fn serialize(&self, record: &T, sideloads: &Sideloads) -> Result<Value, SerializeError> {
        default_serialize(record, sideloads)
    }
}

/// [`DefaultSerializer`] for any record: its serde fields, `"links"`, then the sideloads.
/// Also how sideloaded records are nested (with no sideloads of their own).
pub fn default_serialize(record: &dyn Record, sideloads: &Sideloads) -> Result<Value, SerializeError> {
    let model = record.model().model_name;
    let json = record.to_json().map_err(|source| SerializeError::Serde { model, id: record.id(), source })?;
    match json {
        Value::Object(object) => Ok(Value::Object(sideloads.attach(object))),
        other => Err(SerializeError::NotAnObject { model, found: kind(&other) }),
    }
}

/// The serializer `S` of `T` as the function a [`Publication`](crate::registry::model::Publication)
/// stores: `S` applied to the record when it is a `T`. `#[derive(Publishable)]` fills it in;
/// a publication built at run time (`Registry::with_publications`) names it.
pub fn serialize_erased<T: Publishable, S: Serializer<T>>(
    record: &dyn Record,
    sideloads: &Sideloads,
) -> Result<Value, SerializeError> {
    match record.as_any().downcast_ref::<T>() {
        Some(record) => S::default().serialize(record, sideloads),
        None => Err(SerializeError::WrongModel { expected: T::MODEL.model_name, found: record.model().model_name }),
    }
}
