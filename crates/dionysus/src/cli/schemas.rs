//! `dionysus schemas register|check` (feature `avro`): the Avro topics' schemas against a
//! schema registry — registering each under its subject (kaufmann_ex's `migrate_schemas`),
//! or reporting whether each is compatible with the subject's latest version (deimos'
//! `schemas_compatible?`). The schemas themselves, the subjects and the protocol are
//! `crate::avro`'s.

use std::io::Write;

use crate::avro::registry::{Compatibility, RegistryClient, RegistryError};
use crate::avro::schemas::{LocalSchemas, SchemaError};
use crate::avro::topic_schemas;
use crate::registry::Registry;

/// Why `schemas register|check` failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum SchemasError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("writing the report")]
    Output(#[from] std::io::Error),
    #[error(
        "{count} schema(s) are not compatible with the registry's latest version under the subject's compatibility \
         level: {subjects}"
    )]
    Incompatible { count: usize, subjects: String },
}

/// What to do with the schemas.
#[derive(Debug, Clone, Copy)]
pub(super) enum Action {
    Register,
    Check,
}

pub(super) async fn run(
    registry: &Registry,
    url: &str,
    action: Action,
    out: &mut (dyn Write + Send),
) -> Result<(), SchemasError> {
    let client = RegistryClient::new(url)?;
    let subjects = topic_schemas(registry, LocalSchemas::global()?)?;
    if subjects.is_empty() {
        writeln!(out, "no Avro topics are declared in this binary (#[dionysus::topic(format = \"avro\", …)])")?;
        return Ok(());
    }
    let mut incompatible = Vec::new();
    for subject in &subjects {
        match action {
            Action::Register => {
                let id = client.register(&subject.subject, &subject.definition).await?;
                writeln!(out, "registered {}  {} (id {id})", subject.subject, subject.schema)?;
            }
            Action::Check => {
                let verdict = client.compatibility(&subject.subject, &subject.definition).await?;
                let text = match verdict {
                    Compatibility::Compatible => "compatible",
                    Compatibility::NewSubject => "new subject",
                    Compatibility::Incompatible => {
                        incompatible.push(subject.subject.clone());
                        "INCOMPATIBLE"
                    }
                };
                writeln!(out, "{text:<12}  {}  {}", subject.subject, subject.schema)?;
            }
        }
    }
    if incompatible.is_empty() {
        Ok(())
    } else {
        Err(SchemasError::Incompatible { count: incompatible.len(), subjects: incompatible.join(", ") })
    }
}
