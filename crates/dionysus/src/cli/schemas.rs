//! `dionysus schemas register|check` (feature `avro`): the Avro topics' schemas against a
//! schema registry — registering each under its subject (kaufmann_ex's `migrate_schemas`),
//! or reporting whether each is compatible with the subject's latest version (deimos'
//! `schemas_compatible?`). The schemas themselves, the subjects and the protocol are
//! `crate::avro`'s.

use std::io::Write;

use crate::avro::registry::{Compatibility, RegistryClient};
use crate::avro::schemas::LocalSchemas;
use crate::avro::topic_schemas;
use crate::registry::Registry;

use super::Failure;

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
) -> Result<(), Failure> {
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
        Err(Failure::new(format!(
            "{} schema(s) are not compatible with the registry's latest version under the subject's compatibility \
             level: {}",
            incompatible.len(),
            incompatible.join(", ")
        )))
    }
}
