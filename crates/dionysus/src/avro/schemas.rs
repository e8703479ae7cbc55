//! The Avro schemas a program knows locally: those its declarations embedded at compile time
//! ([`SchemaEntry`], one per schema file named by a macro), parsed together so schemas may
//! refer to each other's named types. Also the key schema a `key(field = …)` topic uses,
//! generated from the value schema's field as deimos does (`<Record>_key`).
//!
//! Which id a schema has in a registry is `registry`'s business.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use apache_avro::Schema;
use serde_json::{json, Value};

use crate::registry::SchemaEntry;

/// A schema could not be found or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// No declaration embeds a schema of this name.
    #[error("no declaration names the Avro schema `{name}` (known: {known})")]
    Unknown {
        /// The full name asked for.
        name: String,
        /// The names known.
        known: String,
    },
    /// The embedded schemas do not parse (together).
    #[error("the Avro schemas {names} do not parse: {reason}")]
    Invalid {
        /// The schemas parsed together.
        names: String,
        /// What the parser reported.
        reason: String,
    },
    /// A key field is not a field of the value schema.
    #[error("the Avro schema `{schema}` has no field `{field}` for the message key")]
    NoKeyField {
        /// The value schema.
        schema: String,
        /// The key field.
        field: String,
    },
}

/// Parsed schemas by full name, with their text.
#[derive(Debug, Default)]
pub struct LocalSchemas {
    schemas: BTreeMap<String, (Schema, String)>,
}

impl LocalSchemas {
    /// The schemas embedded by this program's declarations.
    pub fn global() -> Result<&'static LocalSchemas, SchemaError> {
        static GLOBAL: OnceLock<Result<LocalSchemas, SchemaError>> = OnceLock::new();
        GLOBAL
            .get_or_init(|| {
                LocalSchemas::parse(
                    inventory::iter::<SchemaEntry>.into_iter().map(|entry| (entry.name, entry.definition)),
                )
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Parses `(full name, JSON text)` pairs together; a name given twice is read once.
    pub fn parse<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<LocalSchemas, SchemaError> {
        let distinct: BTreeMap<&str, &str> = entries.into_iter().collect();
        let names = distinct.keys().copied().collect::<Vec<_>>().join(", ");
        let parsed = Schema::parse_list(distinct.values().copied())
            .map_err(|error| SchemaError::Invalid { names: names.clone(), reason: error.to_string() })?;
        let schemas = distinct
            .iter()
            .zip(parsed)
            .map(|((name, text), schema)| ((*name).to_owned(), (schema, (*text).to_owned())))
            .collect();
        Ok(LocalSchemas { schemas })
    }

    /// The schema of this full name.
    pub fn get(&self, name: &str) -> Result<&Schema, SchemaError> {
        self.schemas.get(name).map(|(schema, _)| schema).ok_or_else(|| self.unknown(name))
    }

    /// The JSON text of the schema of this full name, as embedded.
    pub fn definition(&self, name: &str) -> Result<&str, SchemaError> {
        self.schemas.get(name).map(|(_, text)| text.as_str()).ok_or_else(|| self.unknown(name))
    }

    /// Every known full name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.schemas.keys().map(String::as_str)
    }

    fn unknown(&self, name: &str) -> SchemaError {
        SchemaError::Unknown { name: name.to_owned(), known: self.names().collect::<Vec<_>>().join(", ") }
    }

    /// The key schema of a `key(field = …)` topic: a record `<Record>_key` in the value
    /// schema's namespace with that one field, as JSON text.
    pub fn field_key_definition(&self, value_schema: &str, field: &str) -> Result<String, SchemaError> {
        let definition: Value = serde_json::from_str(self.definition(value_schema)?)
            .map_err(|error| SchemaError::Invalid { names: value_schema.to_owned(), reason: error.to_string() })?;
        let no_field = || SchemaError::NoKeyField { schema: value_schema.to_owned(), field: field.to_owned() };
        let field_type = definition
            .get("fields")
            .and_then(Value::as_array)
            .and_then(|fields| fields.iter().find(|candidate| candidate.get("name") == Some(&json!(field))))
            .and_then(|found| found.get("type"))
            .ok_or_else(no_field)?;
        let (namespace, record) = match value_schema.rsplit_once('.') {
            Some((namespace, record)) => (Some(namespace), record),
            None => (None, value_schema),
        };
        let mut key = json!({
            "type": "record",
            "name": format!("{record}_key"),
            "doc": format!("Key for {value_schema}"),
            "fields": [{"name": field, "type": field_type}],
        });
        if let (Some(namespace), Some(object)) = (namespace, key.as_object_mut()) {
            object.insert("namespace".to_owned(), json!(namespace));
        }
        Ok(key.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str =
        r#"{"type": "enum", "name": "Status", "namespace": "com.example", "symbols": ["open", "closed"]}"#;
    const RENTAL: &str = r#"{"type": "record", "name": "Rental", "namespace": "com.example", "fields": [
        {"name": "id", "type": "long"}, {"name": "status", "type": "com.example.Status"}]}"#;

    #[test]
    fn schemas_refer_to_each_others_named_types_and_duplicates_are_read_once() {
        let schemas = LocalSchemas::parse([
            ("com.example.Rental", RENTAL),
            ("com.example.Status", STATUS),
            ("com.example.Rental", RENTAL),
        ])
        .unwrap();
        assert_eq!(schemas.names().collect::<Vec<_>>(), ["com.example.Rental", "com.example.Status"]);
        assert!(matches!(schemas.get("com.example.Rental"), Ok(Schema::Record(_))));
        assert!(matches!(schemas.get("com.example.Nope"), Err(SchemaError::Unknown { .. })));
    }

    #[test]
    fn a_field_key_schema_is_a_record_of_that_field() {
        let schemas = LocalSchemas::parse([("com.example.Rental", RENTAL), ("com.example.Status", STATUS)]).unwrap();
        let key: Value =
            serde_json::from_str(&schemas.field_key_definition("com.example.Rental", "id").unwrap()).unwrap();
        assert_eq!(key["name"], "Rental_key");
        assert_eq!(key["namespace"], "com.example");
        assert_eq!(key["fields"], json!([{"name": "id", "type": "long"}]));
        assert!(matches!(
            schemas.field_key_definition("com.example.Rental", "nope"),
            Err(SchemaError::NoKeyField { .. })
        ));
    }
}
