//! The registry of everything declared with dionysus's macros: topics now, and the
//! references other declarations make to topics by name. Declarations are collected through
//! `inventory` at link time; [`Registry::global`] reads them, [`Registry::validate`] checks
//! them as a whole (duplicates, conflicts, references to undeclared topics, a topic's
//! `partition_key` that none of its models has) before any message is read or written.
//!
//! This module owns the declarations and their consistency. It does not talk to the broker
//! or the database: creating and checking the declared topics there is `kafka`'s job (and
//! `dionysus check`'s), and what a declaration makes happen belongs to the producer and the
//! consumer.

use std::any::TypeId;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;

pub mod model;

use model::{Dependency, ModelEntry, Observer, PartitionKeyFn, PartitionKeySource, Publication};

/// The pseudo-topic of deferred observer rows in the outbox (never produced to Kafka, W-16).
pub const OBSERVER_TOPIC: &str = "__outbox_observer__";

/// How a tombstone (the "this record is gone" message) is written on a topic.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Tombstone {
    /// The 4-byte JSON text `null`, as dionysus-rb sends it (the default). Log compaction
    /// treats it as an ordinary value.
    JsonNull,
    /// A real Kafka null value, which log compaction treats as a delete marker.
    /// Consumers accept both encodings.
    KafkaNull,
}

/// What a topic's messages are.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum TopicFormat {
    /// The dionysus-rb JSON envelope (the default): events with their records, sideloads and
    /// tombstones as the gem writes them.
    Json,
    /// One Avro record per message (deimos style): the value is the record encoded with its
    /// schema, the key follows the key config, a deleted record is a tombstone (a null
    /// value) with its key.
    Avro {
        /// The record schema's full name, e.g. `com.example.Rental`.
        schema: &'static str,
        /// What the message key is.
        key: KeyConfig,
    },
}

impl TopicFormat {
    /// The record schema's full name of an Avro topic.
    pub fn schema(&self) -> Option<&'static str> {
        match self {
            TopicFormat::Json => None,
            TopicFormat::Avro { schema, .. } => Some(schema),
        }
    }
}

/// The message key of an Avro topic (`key(...)` on `#[dionysus::topic]`, deimos'
/// `key_config`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum KeyConfig {
    /// No key: messages are spread by the partition key alone.
    None,
    /// The record's primary key as text, not encoded (the default).
    Plain,
    /// The value of this record field, Avro-encoded with a one-field key schema.
    Field(&'static str),
    /// A key record schema (its full name) whose fields are taken from the record.
    Schema(&'static str),
}

/// An Avro schema a declaration names, its text embedded at compile time from the crate's
/// schema directory (`schemas/com/example/Rental.avsc` for `com.example.Rental`). Every
/// macro that names a schema submits one; the same name may come more than once.
#[derive(Debug)]
pub struct SchemaEntry {
    /// The schema's full name.
    pub name: &'static str,
    /// The schema's JSON text.
    pub definition: &'static str,
}

inventory::collect!(SchemaEntry);

/// A topic declared with `#[dionysus::topic(...)]`.
#[derive(Debug, PartialEq, Eq)]
pub struct TopicDeclaration {
    /// Namespace, e.g. `"v3"`; the full name is `<namespace>_<name>`.
    pub namespace: Option<&'static str>,
    /// Name within the namespace, e.g. `"rentals"`.
    pub name: &'static str,
    /// The topic's name on the broker, e.g. `"v3_rentals"`.
    pub full_name: &'static str,
    /// The record attribute whose value chooses the partition, when the publisher does not
    /// give its own; falls back to the configured default partition key.
    pub partition_key: Option<&'static str>,
    /// A function computing the partition key, when the publisher does not give its own
    /// (`partition_key_with = path` on the declaration); exclusive with `partition_key`.
    pub partition_key_with: Option<PartitionKeyWith>,
    /// Number of partitions the topic is expected to have (checked by `dionysus check`, used
    /// when creating topics).
    pub partitions: Option<i32>,
    /// Replication factor used when creating the topic.
    pub replication_factor: Option<i16>,
    /// Whether every message is also published to the `<full_name>_genesis` replica topic.
    pub genesis_replica: bool,
    /// How tombstones are encoded on this topic.
    pub tombstone: Tombstone,
    /// The JSON envelope, or Avro records with a schema and a key config.
    pub format: TopicFormat,
    /// Path of the declaring type, e.g. `my_app::topics::Rentals`.
    pub declared_by: &'static str,
    /// `file:line` of the declaration.
    pub location: &'static str,
}

impl TopicDeclaration {
    /// Placeholder used by the macro's error fallback; never registered.
    #[doc(hidden)]
    pub const INVALID: TopicDeclaration = TopicDeclaration {
        namespace: None,
        name: "",
        full_name: "",
        partition_key: None,
        partition_key_with: None,
        partitions: None,
        replication_factor: None,
        genesis_replica: false,
        tombstone: Tombstone::JsonNull,
        format: TopicFormat::Json,
        declared_by: "",
        location: "",
    };

    /// The genesis replica's name, `<full_name>_genesis`, when the topic has one.
    pub fn genesis_name(&self) -> Option<String> {
        self.genesis_replica.then(|| genesis_topic_name(self.full_name))
    }

    /// The settings in which two declarations of the same topic differ, as readable text.
    fn differences(&self, other: &TopicDeclaration) -> Vec<String> {
        let mut differences = Vec::new();
        let mut compare = |what: &str, a: String, b: String| {
            if a != b {
                differences.push(format!("{what}: {a} vs {b}"));
            }
        };
        compare("partition_key", format!("{:?}", self.partition_key), format!("{:?}", other.partition_key));
        if self.partition_key_with != other.partition_key_with {
            compare("partition_key_with", "a function".to_owned(), "another function".to_owned());
        }
        compare("partitions", format!("{:?}", self.partitions), format!("{:?}", other.partitions));
        compare(
            "replication_factor",
            format!("{:?}", self.replication_factor),
            format!("{:?}", other.replication_factor),
        );
        compare("genesis_replica", self.genesis_replica.to_string(), other.genesis_replica.to_string());
        compare("tombstone", format!("{:?}", self.tombstone), format!("{:?}", other.tombstone));
        compare("format", format!("{:?}", self.format), format!("{:?}", other.format));
        differences
    }
}

/// A topic's partition key function (`partition_key_with = path` on `#[dionysus::topic]`).
/// Two declarations are equal when they name the same function.
#[derive(Copy, Clone, Debug)]
pub struct PartitionKeyWith(pub PartitionKeyFn);

impl PartialEq for PartitionKeyWith {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::fn_addr_eq(self.0, other.0)
    }
}

impl Eq for PartitionKeyWith {}

/// `<namespace>_<name>`, the topic naming rule shared with dionysus-rb.
pub fn topic_name(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(namespace) if !namespace.is_empty() => format!("{namespace}_{name}"),
        _ => name.to_owned(),
    }
}

/// `<topic>_genesis`, the genesis replica of a topic.
pub fn genesis_topic_name(topic: &str) -> String {
    format!("{topic}_genesis")
}

/// Implemented by `#[dionysus::topic]` on the declaring struct; gives typed access to the
/// declaration, e.g. `Rentals::NAME`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a topic",
    label = "not declared with `#[dionysus::topic(...)]`",
    note = "declare it: `#[dionysus::topic(namespace = \"v3\", name = \"rentals\")] pub struct {Self};`, or name the topic as a string: `topic = \"v3_rentals\"`"
)]
pub trait Topic {
    /// The declaration.
    const DECLARATION: &'static TopicDeclaration;
    /// The topic's full name on the broker.
    const NAME: &'static str = Self::DECLARATION.full_name;
    /// The declaration's `partition_key` as a type-level field name, so models published on
    /// the topic can have the field it names checked by the compiler (see the `Publishable`
    /// derive).
    #[doc(hidden)]
    type PartitionKeyField;
}

/// A declaration that names a topic by string (a publisher, a consumer, a handler), checked
/// by [`Registry::validate`].
#[derive(Debug, PartialEq, Eq)]
pub struct TopicReference {
    /// The topic name as written, e.g. `"v3_rentals"` or `"v3_rentals_genesis"`.
    pub topic: &'static str,
    /// What refers to it, e.g. `publisher my_app::Rental`.
    pub by: &'static str,
    /// `file:line` of the reference.
    pub location: &'static str,
}

#[doc(hidden)]
pub struct TopicEntry(pub &'static TopicDeclaration);
inventory::collect!(TopicEntry);

#[doc(hidden)]
pub struct TopicReferenceEntry(pub &'static TopicReference);
inventory::collect!(TopicReferenceEntry);

/// Submitted by `#[derive(Publishable)]` for every model, published or not.
#[doc(hidden)]
pub struct ModelRegistration(pub fn() -> &'static ModelEntry);
inventory::collect!(ModelRegistration);

/// Everything declared, in one place.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    by_name: BTreeMap<&'static str, Vec<&'static TopicDeclaration>>,
    references: Vec<&'static TopicReference>,
    /// Publishable models, each once, in registration order.
    models: Vec<&'static ModelEntry>,
    /// Every `#[publish(...)]` of those models.
    publications: Vec<&'static Publication>,
    /// The partition key function of publications whose topic names none.
    default_partition_key: Option<PartitionKeyFn>,
}

impl From<&Registry> for std::sync::Arc<Registry> {
    /// A shared copy (a registry holds references to its declarations, so copying it is cheap).
    fn from(registry: &Registry) -> Self {
        std::sync::Arc::new(registry.clone())
    }
}

/// Whether a topic name denotes a declared topic itself or its genesis replica.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum TopicRole {
    /// The declared (primary) topic.
    Primary,
    /// The `<topic>_genesis` replica of a topic declared with `genesis_replica = true`.
    Genesis,
}

impl Registry {
    /// The registry of this binary: every declaration linked into it.
    pub fn global() -> &'static Registry {
        static GLOBAL: OnceLock<Registry> = OnceLock::new();
        GLOBAL.get_or_init(|| {
            Registry::new(
                inventory::iter::<TopicEntry>.into_iter().map(|entry| entry.0),
                inventory::iter::<TopicReferenceEntry>.into_iter().map(|entry| entry.0),
            )
            .with_models(inventory::iter::<ModelRegistration>.into_iter().map(|entry| (entry.0)()))
        })
    }

    /// A registry of the given declarations (for tests and hand-built setups).
    pub fn new(
        topics: impl IntoIterator<Item = &'static TopicDeclaration>,
        references: impl IntoIterator<Item = &'static TopicReference>,
    ) -> Registry {
        let mut by_name: BTreeMap<&'static str, Vec<&'static TopicDeclaration>> = BTreeMap::new();
        for topic in topics {
            by_name.entry(topic.full_name).or_default().push(topic);
        }
        for declarations in by_name.values_mut() {
            declarations.sort_by_key(|declaration| (declaration.declared_by, declaration.location));
        }
        let mut references: Vec<_> = references.into_iter().collect();
        references.sort_by(|a, b| a.topic.cmp(b.topic).then(a.location.cmp(b.location)));
        Registry { by_name, references, models: Vec::new(), publications: Vec::new(), default_partition_key: None }
    }

    /// Adds publishable models and their publications (each model once).
    #[must_use]
    pub fn with_models(mut self, models: impl IntoIterator<Item = &'static ModelEntry>) -> Registry {
        for model in models {
            if self.models.iter().any(|known| std::ptr::eq(*known, model)) {
                continue;
            }
            self.models.push(model);
            self.publications.extend((model.publications)().iter());
        }
        self
    }

    /// Adds publications built at run time (their models too, without their declared
    /// publications), e.g. a model published on a topic whose name is only known then.
    #[must_use]
    pub fn with_publications(mut self, publications: impl IntoIterator<Item = &'static Publication>) -> Registry {
        for publication in publications {
            if !self.models.iter().any(|known| std::ptr::eq(*known, publication.model)) {
                self.models.push(publication.model);
            }
            self.publications.push(publication);
        }
        self
    }

    /// Makes `resolve` the default partition key (dionysus-rb's callable
    /// `default_partition_key`, P-26): used for every publication that names no partition key
    /// of its own on a topic that names none, in place of the configured default attribute
    /// (`DIONYSUS_DEFAULT_PARTITION_KEY`). A function is code, so it is declared with the
    /// registry rather than read from the environment.
    #[must_use]
    pub fn with_default_partition_key(mut self, resolve: PartitionKeyFn) -> Registry {
        self.default_partition_key = Some(resolve);
        self
    }

    /// The default partition key function, if one was given.
    pub fn default_partition_key(&self) -> Option<PartitionKeyFn> {
        self.default_partition_key
    }

    /// Adds the model `T` and its publications.
    #[must_use]
    pub fn with_model<T: model::Model>(self) -> Registry {
        self.with_models([T::entry()])
    }

    /// Every publishable model.
    pub fn models(&self) -> &[&'static ModelEntry] {
        &self.models
    }

    /// The model with this wire name (`Rental`, `Bookings::Fee`).
    pub fn model(&self, model_name: &str) -> Option<&'static ModelEntry> {
        self.models.iter().copied().find(|model| model.model_name == model_name)
    }

    /// The model of a Rust type.
    pub fn model_of_type(&self, type_id: TypeId) -> Option<&'static ModelEntry> {
        self.models.iter().copied().find(|model| (model.type_id)() == type_id)
    }

    /// Every publication, models in registration order, each model's in declaration order.
    pub fn publications(&self) -> &[&'static Publication] {
        &self.publications
    }

    /// The publications of a model (by wire name), in declaration order.
    pub fn publications_of<'a>(&'a self, model_name: &'a str) -> impl Iterator<Item = &'static Publication> + 'a {
        self.publications.iter().copied().filter(move |publication| publication.model.model_name == model_name)
    }

    /// The partition key of a record for a publication (P-26): the publication's own source,
    /// else the topic's `partition_key` (an attribute or a function), else this registry's
    /// default function, else `default_attribute` (the configured
    /// `DIONYSUS_DEFAULT_PARTITION_KEY`). An attribute the model does not have gives `None`
    /// (no partition key), as does a function returning `None`.
    pub fn partition_key(
        &self,
        publication: &Publication,
        record: &dyn model::Record,
        default_attribute: &str,
    ) -> Option<String> {
        let attribute = match publication.partition_key {
            PartitionKeySource::Resolver(resolve) => return resolve(record),
            PartitionKeySource::Attribute(name) => name,
            PartitionKeySource::Inherit => {
                let topic = self.topic(publication.topic);
                if let Some(resolve) = topic.and_then(|topic| topic.partition_key_with) {
                    return (resolve.0)(record);
                }
                match topic.and_then(|topic| topic.partition_key).filter(|key| !key.is_empty()) {
                    Some(attribute) => attribute,
                    None => match self.default_partition_key {
                        Some(resolve) => return resolve(record),
                        None => default_attribute,
                    },
                }
            }
        };
        record.attribute(attribute).map(|value| crate::wire::partition::partition_key_from_value(&value))
    }

    /// The publications of a model on a topic given by its primary or its genesis name.
    pub fn publications_on(&self, model_name: &str, topic: &str) -> Vec<&'static Publication> {
        let primary = match self.resolve(topic) {
            Some((declaration, _)) => declaration.full_name,
            None => topic,
        };
        self.publications_of(model_name).filter(|publication| publication.topic == primary).collect()
    }

    /// `(publication, dependency)` pairs whose `with(...)` names `model`: a change to a
    /// `model` record republishes its parents through them.
    pub fn dependents_of(&self, model: &ModelEntry) -> Vec<(&'static Publication, &'static Dependency)> {
        let mut found = Vec::new();
        for publication in &self.publications {
            for dependency in publication.with {
                if std::ptr::eq((dependency.model)(), model) || (dependency.model)().model_name == model.model_name {
                    found.push((*publication, dependency));
                }
            }
        }
        found
    }

    /// `(publication, observer)` pairs whose `observe(...)` names `model`.
    pub fn observers_of(&self, model: &ModelEntry) -> Vec<(&'static Publication, &'static Observer)> {
        let mut found = Vec::new();
        for publication in &self.publications {
            for observer in publication.observe {
                if std::ptr::eq((observer.model)(), model) || (observer.model)().model_name == model.model_name {
                    found.push((*publication, observer));
                }
            }
        }
        found
    }

    /// Every declared topic, ordered by name (one entry per declaration).
    pub fn topics(&self) -> impl Iterator<Item = &'static TopicDeclaration> + '_ {
        self.by_name.values().filter_map(|declarations| declarations.first().copied())
    }

    /// The declaration of the topic with this full name.
    pub fn topic(&self, full_name: &str) -> Option<&'static TopicDeclaration> {
        self.by_name.get(full_name).and_then(|declarations| declarations.first().copied())
    }

    /// Resolves a name that may be a declared topic or the genesis replica of one.
    pub fn resolve(&self, name: &str) -> Option<(&'static TopicDeclaration, TopicRole)> {
        if let Some(topic) = self.topic(name) {
            return Some((topic, TopicRole::Primary));
        }
        let primary = name.strip_suffix("_genesis")?;
        self.topic(primary).filter(|topic| topic.genesis_replica).map(|topic| (topic, TopicRole::Genesis))
    }

    /// Every topic reference made by other declarations.
    pub fn references(&self) -> &[&'static TopicReference] {
        &self.references
    }

    /// Checks the declarations as a whole and reports every problem at once.
    pub fn validate(&self) -> Result<(), RegistryError> {
        let mut problems = Vec::new();
        for (name, declarations) in &self.by_name {
            let Some((first, rest)) = declarations.split_first() else { continue };
            for other in rest {
                let differences = first.differences(other);
                if differences.is_empty() {
                    problems.push(Problem::DuplicateTopic {
                        topic: name.to_string(),
                        first: describe(first),
                        second: describe(other),
                    });
                } else {
                    problems.push(Problem::ConflictingTopic {
                        topic: name.to_string(),
                        first: describe(first),
                        second: describe(other),
                        differences,
                    });
                }
            }
            if let Some(genesis) = first.genesis_name() {
                if let Some(clash) = self.topic(&genesis) {
                    problems.push(Problem::GenesisNameTaken {
                        topic: name.to_string(),
                        genesis,
                        declared: describe(clash),
                    });
                }
            }
        }
        for (index, model) in self.models.iter().enumerate() {
            if let Some(other) = self.models[..index].iter().find(|other| other.model_name == model.model_name) {
                problems.push(Problem::DuplicateModel {
                    model: model.model_name.to_owned(),
                    first: other.rust_name.to_owned(),
                    second: model.rust_name.to_owned(),
                });
            }
        }
        for topic in self.topics() {
            problems.extend(self.unknown_partition_key(topic));
        }
        for publication in &self.publications {
            if let Some(topic) = self.topic(publication.topic) {
                if topic.format.schema() != publication.schema {
                    problems.push(Problem::SchemaMismatch {
                        topic: topic.full_name.to_owned(),
                        declared: topic.format.schema().map(str::to_owned),
                        published: publication.schema.map(str::to_owned),
                        model: publication.model.rust_name.to_owned(),
                        location: publication.location.to_owned(),
                    });
                }
            }
            if self.topic(publication.topic).is_none() {
                problems.push(Problem::UndeclaredTopic {
                    topic: publication.topic.to_owned(),
                    by: format!("publisher {}", publication.model.rust_name),
                    location: publication.location.to_owned(),
                    suggestion: self.suggest(publication.topic),
                });
            }
        }
        for reference in &self.references {
            if self.resolve(reference.topic).is_some() {
                continue;
            }
            let suggestion = self.suggest(reference.topic);
            problems.push(Problem::UndeclaredTopic {
                topic: reference.topic.to_owned(),
                by: reference.by.to_owned(),
                location: reference.location.to_owned(),
                suggestion,
            });
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(RegistryError { problems })
        }
    }

    /// The problem with `topic`'s `partition_key`, if no model published on it with the
    /// topic's key (a publication with no key of its own) has that field: their outbox rows
    /// would get no partition key at all.
    fn unknown_partition_key(&self, topic: &TopicDeclaration) -> Option<Problem> {
        let key = topic.partition_key?;
        let inheriting: Vec<&ModelEntry> = self
            .publications
            .iter()
            .filter(|publication| {
                publication.topic == topic.full_name && matches!(publication.partition_key, PartitionKeySource::Inherit)
            })
            .map(|publication| publication.model)
            .collect();
        if inheriting.is_empty() || inheriting.iter().any(|model| model.attributes.contains(&key)) {
            return None;
        }
        let fields = inheriting.iter().flat_map(|model| model.attributes.iter().map(|field| (*field).to_owned()));
        let mut models: Vec<String> = inheriting.iter().map(|model| model.rust_name.to_owned()).collect();
        models.dedup();
        Some(Problem::UnknownPartitionKey {
            topic: topic.full_name.to_owned(),
            key: key.to_owned(),
            declared: describe(topic),
            models,
            suggestion: closest(key, fields),
        })
    }

    /// The declared name closest to `name`, for "did you mean" hints.
    fn suggest(&self, name: &str) -> Option<String> {
        closest(name, self.topic_names())
    }

    /// Every declared topic name, each followed by its genesis replica's name when it has
    /// one.
    pub fn topic_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for topic in self.topics() {
            names.push(topic.full_name.to_owned());
            names.extend(topic.genesis_name());
        }
        names
    }
}

/// The candidate closest to `name` within a few edits, for "did you mean" hints.
pub(crate) fn closest(name: &str, candidates: impl IntoIterator<Item = String>) -> Option<String> {
    let limit = (name.len() / 3).max(2);
    candidates
        .into_iter()
        .map(|candidate| (strsim::osa_distance(name, &candidate), candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

fn describe(topic: &TopicDeclaration) -> String {
    format!("{} ({})", topic.declared_by, topic.location)
}

/// One problem found by [`Registry::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// The same topic is declared twice with identical settings.
    DuplicateTopic {
        /// The topic's full name.
        topic: String,
        /// The first declaration (type and location).
        first: String,
        /// The second declaration.
        second: String,
    },
    /// The same topic is declared twice with different settings.
    ConflictingTopic {
        /// The topic's full name.
        topic: String,
        /// The first declaration.
        first: String,
        /// The second declaration.
        second: String,
        /// Each differing setting, e.g. `partitions: Some(12) vs Some(6)`.
        differences: Vec<String>,
    },
    /// A topic's genesis replica name is also declared as a topic of its own.
    GenesisNameTaken {
        /// The topic with `genesis_replica = true`.
        topic: String,
        /// Its replica's name.
        genesis: String,
        /// The declaration that uses that name.
        declared: String,
    },
    /// Two Rust types publish under the same model name.
    DuplicateModel {
        /// The model name on the wire.
        model: String,
        /// The first type.
        first: String,
        /// The second type.
        second: String,
    },
    /// A topic's `partition_key` names a field that none of the models published on it
    /// with the topic's key has.
    UnknownPartitionKey {
        /// The topic's full name.
        topic: String,
        /// The `partition_key` as declared.
        key: String,
        /// The declaration (type and location).
        declared: String,
        /// The models published on the topic without a partition key of their own.
        models: Vec<String>,
        /// A field of those models with a similar name.
        suggestion: Option<String>,
    },
    /// A publication's `schema = "…"` disagrees with its topic's format: a schema on a JSON
    /// topic, none on an Avro topic, or another schema than the topic's.
    SchemaMismatch {
        /// The topic's full name.
        topic: String,
        /// The schema the topic declares (`None`: a JSON topic).
        declared: Option<String>,
        /// The schema the publication names (`None`: none).
        published: Option<String>,
        /// The publishing model.
        model: String,
        /// Where it is published.
        location: String,
    },
    /// A declaration names a topic that no `#[dionysus::topic]` declares.
    UndeclaredTopic {
        /// The name as written.
        topic: String,
        /// What refers to it.
        by: String,
        /// Where.
        location: String,
        /// A declared topic with a similar name.
        suggestion: Option<String>,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::DuplicateTopic { topic, first, second } => write!(
                f,
                "topic `{topic}` is declared twice: by {first} and by {second}; declare it once and refer to that type"
            ),
            Problem::ConflictingTopic { topic, first, second, differences } => write!(
                f,
                "topic `{topic}` is declared twice with different settings ({}): by {first} and by {second}",
                differences.join("; ")
            ),
            Problem::GenesisNameTaken { topic, genesis, declared } => write!(
                f,
                "topic `{topic}` has genesis_replica = true, so `{genesis}` is its replica, but {declared} declares `{genesis}` as a topic of its own"
            ),
            Problem::DuplicateModel { model, first, second } => write!(
                f,
                "model name `{model}` is used by both {first} and {second}; give one of them another `model_name`"
            ),
            Problem::UnknownPartitionKey { topic, key, declared, models, suggestion } => {
                write!(
                    f,
                    "topic `{topic}` ({declared}): its partition key names the field `{key}`, which none of its models \
                     has ({}), so their messages would get no partition key",
                    models.join(", ")
                )?;
                match suggestion {
                    Some(suggestion) => write!(f, "; did you mean `{suggestion}`?"),
                    None => write!(f, "; name a field of these models, or give each #[publish(...)] its own partition_key"),
                }
            }
            Problem::SchemaMismatch { topic, declared, published, model, location } => {
                write!(f, "publisher {model} ({location}) on topic `{topic}`: ")?;
                match (declared, published) {
                    (None, Some(published)) => write!(
                        f,
                        "it names the Avro schema `{published}`, but the topic is a JSON topic; declare the topic with \
                         `format = \"avro\", schema = \"{published}\"`"
                    ),
                    (Some(declared), None) => write!(
                        f,
                        "the topic is an Avro topic with schema `{declared}`; add `schema = \"{declared}\"` to the \
                         `#[publish(...)]` so the model is checked against it"
                    ),
                    (Some(declared), Some(published)) => write!(
                        f,
                        "it names the Avro schema `{published}`, but the topic's schema is `{declared}`"
                    ),
                    (None, None) => write!(f, "its format disagrees with the topic's"),
                }
            }
            Problem::UndeclaredTopic { topic, by, location, suggestion } => {
                write!(f, "{by} ({location}) refers to topic `{topic}`, which no #[dionysus::topic] declares")?;
                match suggestion {
                    Some(suggestion) => write!(f, "; did you mean `{suggestion}`?"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// Every problem [`Registry::validate`] found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub struct RegistryError {
    /// The problems, in a stable order (by topic name).
    pub problems: Vec<Problem>,
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        write!(f, "{count} problem{} in the dionysus declarations:", if count == 1 { "" } else { "s" })?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn topic(full_name: &'static str, declared_by: &'static str, partitions: Option<i32>) -> TopicDeclaration {
        TopicDeclaration {
            namespace: None,
            name: full_name,
            full_name,
            partition_key: None,
            partition_key_with: None,
            partitions,
            replication_factor: None,
            genesis_replica: false,
            tombstone: Tombstone::JsonNull,
            format: TopicFormat::Json,
            declared_by,
            location: "src/topics.rs:1",
        }
    }

    static RENTALS: TopicDeclaration = topic("v3_rentals", "app::Rentals", Some(12));
    static RENTALS_AGAIN: TopicDeclaration = topic("v3_rentals", "other::Rentals", Some(12));
    static RENTALS_SIX: TopicDeclaration = topic("v3_rentals", "other::Rentals6", Some(6));
    static ACCOUNTS: TopicDeclaration =
        TopicDeclaration { genesis_replica: true, ..topic("v3_accounts", "app::Accounts", None) };
    static ACCOUNTS_GENESIS: TopicDeclaration = topic("v3_accounts_genesis", "app::AccountsGenesis", None);

    static USES_RENTALS: TopicReference =
        TopicReference { topic: "v3_rentals", by: "publisher app::Rental", location: "src/rental.rs:3" };
    static USES_GENESIS: TopicReference =
        TopicReference { topic: "v3_accounts_genesis", by: "consumer app::Replica", location: "src/replica.rs:9" };
    static USES_TYPO: TopicReference =
        TopicReference { topic: "v3_rentalz", by: "publisher app::Booking", location: "src/booking.rs:7" };
    static USES_UNKNOWN: TopicReference =
        TopicReference { topic: "v9_nothing_alike", by: "handler app::notify", location: "src/notify.rs:2" };

    #[test]
    fn a_consistent_registry_validates() {
        let registry = Registry::new([&RENTALS, &ACCOUNTS], [&USES_RENTALS, &USES_GENESIS]);
        assert_eq!(registry.validate(), Ok(()));
        assert_eq!(registry.topics().map(|t| t.full_name).collect::<Vec<_>>(), ["v3_accounts", "v3_rentals"]);
    }

    #[test]
    fn duplicate_topic_is_reported() {
        let error = Registry::new([&RENTALS, &RENTALS_AGAIN], []).validate().unwrap_err();
        assert!(matches!(&error.problems[..], [Problem::DuplicateTopic { topic, .. }] if topic == "v3_rentals"));
        let text = error.to_string();
        assert!(text.contains("app::Rentals") && text.contains("other::Rentals"), "{text}");
    }

    #[test]
    fn conflicting_declarations_name_the_differing_setting() {
        let error = Registry::new([&RENTALS, &RENTALS_SIX], []).validate().unwrap_err();
        match &error.problems[..] {
            [Problem::ConflictingTopic { differences, .. }] => {
                assert_eq!(differences, &["partitions: Some(12) vs Some(6)".to_owned()]);
            }
            other => panic!("unexpected problems: {other:?}"),
        }
    }

    #[test]
    fn genesis_replica_name_taken_is_reported() {
        let error = Registry::new([&ACCOUNTS, &ACCOUNTS_GENESIS], []).validate().unwrap_err();
        assert!(
            matches!(&error.problems[..], [Problem::GenesisNameTaken { genesis, .. }] if genesis == "v3_accounts_genesis")
        );
    }

    #[test]
    fn reference_to_undeclared_topic_is_reported_with_a_suggestion() {
        let error = Registry::new([&RENTALS], [&USES_TYPO, &USES_UNKNOWN]).validate().unwrap_err();
        assert_eq!(error.problems.len(), 2);
        let text = error.to_string();
        assert!(text.starts_with("2 problems"), "{text}");
        assert!(text.contains("publisher app::Booking (src/booking.rs:7) refers to topic `v3_rentalz`"), "{text}");
        assert!(text.contains("did you mean `v3_rentals`?"), "{text}");
        assert!(matches!(&error.problems[1], Problem::UndeclaredTopic { suggestion: None, .. }));
    }

    #[test]
    fn genesis_name_resolves_only_for_replicated_topics() {
        let registry = Registry::new([&RENTALS, &ACCOUNTS], []);
        assert_eq!(
            registry.resolve("v3_accounts_genesis").map(|(t, r)| (t.full_name, r)),
            Some(("v3_accounts", TopicRole::Genesis))
        );
        assert_eq!(registry.resolve("v3_rentals_genesis"), None);
        let error = Registry::new(
            [&RENTALS],
            [&TopicReference { topic: "v3_rentals_genesis", by: "x", location: "y" }]
                .map(|r| &*Box::leak(Box::new(TopicReference { ..*r }))),
        )
        .validate()
        .unwrap_err();
        assert_eq!(error.problems.len(), 1);
    }

    #[test]
    fn all_problems_are_reported_at_once() {
        let error =
            Registry::new([&RENTALS, &RENTALS_SIX, &ACCOUNTS, &ACCOUNTS_GENESIS], [&USES_TYPO]).validate().unwrap_err();
        assert_eq!(error.problems.len(), 3, "{error}");
    }

    static KEYED: TopicDeclaration =
        TopicDeclaration { partition_key: Some("acount_id"), ..topic("v3_keyed", "app::Keyed", None) };
    static KEYED_RIGHT: TopicDeclaration =
        TopicDeclaration { partition_key: Some("account_id"), ..topic("v3_keyed", "app::Keyed", None) };
    static RENTAL: ModelEntry = ModelEntry {
        model_name: "Rental",
        table: "rentals",
        primary_key: "id",
        attributes: &["id", "account_id", "name"],
        rust_name: "app::Rental",
        ..ModelEntry::INVALID
    };

    const fn publication(partition_key: PartitionKeySource) -> Publication {
        Publication {
            model: &RENTAL,
            topic: "v3_keyed",
            partition_key,
            with: &[],
            observe: &[],
            serialize: |_, _| Ok(serde_json::Value::Null),
            schema: None,
            location: "src/rental.rs:2",
        }
    }

    static INHERITS: Publication = publication(PartitionKeySource::Inherit);
    static OWN_KEY: Publication = publication(PartitionKeySource::Attribute("account_id"));

    #[test]
    fn a_topic_partition_key_no_model_has_is_reported_with_the_field_meant() {
        let error = Registry::new([&KEYED], []).with_publications([&INHERITS]).validate().unwrap_err();
        assert_eq!(
            error.problems,
            [Problem::UnknownPartitionKey {
                topic: "v3_keyed".to_owned(),
                key: "acount_id".to_owned(),
                declared: "app::Keyed (src/topics.rs:1)".to_owned(),
                models: vec!["app::Rental".to_owned()],
                suggestion: Some("account_id".to_owned()),
            }]
        );
        let text = error.to_string();
        assert!(
            text.contains(
                "topic `v3_keyed` (app::Keyed (src/topics.rs:1)): its partition key names the field `acount_id`"
            ),
            "{text}"
        );
        assert!(text.contains("did you mean `account_id`?"), "{text}");
    }

    #[test]
    fn a_topic_partition_key_is_fine_when_a_model_has_it_or_none_uses_it() {
        assert_eq!(Registry::new([&KEYED_RIGHT], []).with_publications([&INHERITS]).validate(), Ok(()));
        // Every publication names its own key: the topic's is never used.
        assert_eq!(Registry::new([&KEYED], []).with_publications([&OWN_KEY]).validate(), Ok(()));
        // Nothing published here (a consumer's declaration).
        assert_eq!(Registry::new([&KEYED], []).validate(), Ok(()));
    }

    #[test]
    fn topic_naming_follows_the_gem() {
        assert_eq!(topic_name(Some("v3"), "rentals"), "v3_rentals");
        assert_eq!(topic_name(None, "rentals"), "rentals");
        assert_eq!(genesis_topic_name("v3_rentals"), "v3_rentals_genesis");
    }

    static AVRO_KEYED: TopicDeclaration = TopicDeclaration {
        format: TopicFormat::Avro { schema: "com.example.Rental", key: KeyConfig::Plain },
        ..topic("v3_keyed", "app::Keyed", None)
    };
    static WITH_SCHEMA: Publication =
        Publication { schema: Some("com.example.Rental"), ..publication(PartitionKeySource::Attribute("account_id")) };
    static WITH_OTHER_SCHEMA: Publication =
        Publication { schema: Some("com.example.Other"), ..publication(PartitionKeySource::Attribute("account_id")) };

    #[test]
    fn a_publication_names_its_topics_schema_or_none_on_a_json_topic() {
        assert_eq!(Registry::new([&AVRO_KEYED], []).with_publications([&WITH_SCHEMA]).validate(), Ok(()));
        let mismatch = |declared: Option<&str>, published: Option<&str>| Problem::SchemaMismatch {
            topic: "v3_keyed".to_owned(),
            declared: declared.map(str::to_owned),
            published: published.map(str::to_owned),
            model: "app::Rental".to_owned(),
            location: "src/rental.rs:2".to_owned(),
        };
        let problems = |topic: &'static TopicDeclaration, publication: &'static Publication| {
            Registry::new([topic], []).with_publications([publication]).validate().unwrap_err().problems
        };
        assert_eq!(problems(&KEYED_RIGHT, &WITH_SCHEMA), [mismatch(None, Some("com.example.Rental"))]);
        assert_eq!(problems(&AVRO_KEYED, &OWN_KEY), [mismatch(Some("com.example.Rental"), None)]);
        let other = problems(&AVRO_KEYED, &WITH_OTHER_SCHEMA);
        assert_eq!(other, [mismatch(Some("com.example.Rental"), Some("com.example.Other"))]);
        assert!(other[0].to_string().contains("but the topic's schema is `com.example.Rental`"), "{}", other[0]);
    }
}
