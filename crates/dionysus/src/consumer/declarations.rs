//! What a consumer checks of the declarations before it reads a message: the registry's
//! problems that concern the topics it reads (a topic declared twice or in conflict, a
//! replica or handler naming a topic no `#[dionysus::topic]` declares), which fail its
//! build; and handlers waiting for an event that no model declared on their topic emits
//! (`widget_craeted`), which are warnings with a "did you mean", since another service may
//! send events this binary does not declare.
//!
//! The registry's own rules are `registry`'s; this module only picks what concerns a
//! consumer and adds the checks that need the consumer's declarations (replicas, handlers).

use std::fmt;

use super::handler::HandlerDeclaration;
use crate::consumer::replica::ReplicaDescriptor;
use crate::registry::{Problem, Registry, RegistryError};
use crate::wire::naming::{event_name, event_prefix, EventKind};

/// The registry's problems that concern a consumer of `topics`: `Ok` when there is none.
pub(crate) fn registry_problems(registry: &Registry, topics: &[String]) -> Result<(), RegistryError> {
    let Err(error) = registry.validate() else { return Ok(()) };
    let consumed = |name: &str| topics.iter().any(|topic| topic == name);
    let problems: Vec<Problem> = error
        .problems
        .into_iter()
        .filter(|problem| match problem {
            Problem::DuplicateTopic { topic, .. }
            | Problem::ConflictingTopic { topic, .. }
            | Problem::UndeclaredTopic { topic, .. } => consumed(topic),
            Problem::GenesisNameTaken { topic, genesis, .. } => consumed(topic) || consumed(genesis),
            // The producer's concerns.
            _ => false,
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(RegistryError { problems })
    }
}

/// A handler waits for an event that no model declared on its topic emits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HandlerWarning {
    /// Path of the handler function.
    pub(crate) handler: &'static str,
    /// `file:line` of the handler.
    pub(crate) location: &'static str,
    /// The handler's topic.
    pub(crate) topic: &'static str,
    /// The event it waits for.
    pub(crate) event: &'static str,
    /// The events the models declared on the topic emit (empty: no model is declared there).
    pub(crate) emitted: Vec<String>,
    /// The closest event name it may have meant.
    pub(crate) suggestion: Option<String>,
}

impl fmt::Display for HandlerWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let HandlerWarning { handler, location, topic, event, emitted, suggestion } = self;
        write!(f, "handler {handler} ({location}) waits for event `{event}` on topic `{topic}`, ")?;
        if emitted.is_empty() {
            write!(f, "a name that does not end in created, updated or destroyed as model events do")?;
        } else {
            write!(f, "which no model declared on that topic emits ({})", emitted.join(", "))?;
        }
        if let Some(suggestion) = suggestion {
            write!(f, "; did you mean `{suggestion}`?")?;
        }
        write!(f, " (if another service sends this event, the handler is right)")
    }
}

/// The events the models declared on `topic` can emit: `<model>_created`, `_updated` and
/// `_destroyed` of every model published on it (or on the topic whose genesis replica it
/// is) and of every replica of it.
fn emitted_on<'r>(
    registry: &Registry,
    replicas: impl IntoIterator<Item = &'r ReplicaDescriptor>,
    topic: &str,
) -> Vec<String> {
    let primary = registry.resolve(topic).map_or(topic, |(declaration, _)| declaration.full_name);
    let mut models: Vec<&str> = registry
        .publications()
        .iter()
        .filter(|publication| publication.topic == primary)
        .map(|publication| publication.model.model_name)
        .collect();
    models.extend(
        replicas.into_iter().filter(|replica| replica.topic == topic || replica.topic == primary).map(|r| r.model),
    );
    let mut events: Vec<String> = models
        .into_iter()
        .flat_map(|model| {
            [EventKind::Created, EventKind::Updated, EventKind::Destroyed].map(|kind| event_name(model, kind))
        })
        .collect();
    events.sort();
    events.dedup();
    events
}

/// How many edits away an event name may be from the one it is taken to mean (a swapped or
/// missing letter in the model and in the suffix).
const MAX_TYPOS: usize = 2;

/// A model event `event` may have meant when it ends in a near miss of `created`, `updated`
/// or `destroyed` (`widget_craeted` → `widget_created`).
fn near_miss(event: &str) -> Option<String> {
    if EventKind::classify(event).is_some() {
        return None;
    }
    let (prefix, suffix) = event.rsplit_once('_')?;
    [EventKind::Created, EventKind::Updated, EventKind::Destroyed]
        .into_iter()
        .map(|kind| (strsim::osa_distance(suffix, kind.as_str()), kind))
        .filter(|(distance, _)| *distance <= MAX_TYPOS)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, kind)| format!("{}_{}", event_prefix(prefix), kind.as_str()))
}

/// The handlers among `handlers` waiting for an event no model declared on their topic
/// emits (by the naming rules of `wire::naming`), with the closest one; when no model is
/// declared on a topic, only events that end in a near miss of `created`, `updated` or
/// `destroyed` are reported.
pub(crate) fn handler_warnings(
    registry: &Registry,
    replicas: &[&ReplicaDescriptor],
    handlers: impl IntoIterator<Item = &'static HandlerDeclaration>,
) -> Vec<HandlerWarning> {
    let mut warnings = Vec::new();
    for handler in handlers {
        if handler.event == "*" {
            continue;
        }
        let emitted = emitted_on(registry, replicas.iter().copied(), handler.topic);
        if emitted.iter().any(|event| event == handler.event) {
            continue;
        }
        let suggestion = if emitted.is_empty() {
            match near_miss(handler.event) {
                Some(suggestion) => Some(suggestion),
                None => continue,
            }
        } else {
            emitted
                .iter()
                .map(|event| (strsim::osa_distance(handler.event, event), event))
                .filter(|(distance, _)| *distance <= MAX_TYPOS)
                .min_by_key(|(distance, _)| *distance)
                .map(|(_, event)| event.clone())
        };
        warnings.push(HandlerWarning {
            handler: handler.declared_by,
            location: handler.location,
            topic: handler.topic,
            event: handler.event,
            emitted,
            suggestion,
        });
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumer::handler::{Context, HandlerFuture};
    use crate::consumer::replica::{Column, ColumnKind, DestroyStrategy, NamedRoles};
    use crate::registry::{Tombstone, TopicDeclaration, TopicFormat, TopicReference};

    fn nothing<'a>(_: &'a mut Context<'_>) -> HandlerFuture<'a> {
        Box::pin(async { Ok(()) })
    }

    const fn handler(topic: &'static str, event: &'static str) -> HandlerDeclaration {
        HandlerDeclaration {
            topic,
            event,
            handler: nothing,
            in_transaction: false,
            checkpoint: false,
            on_failure: None,
            error_events: false,
            declared_by: "app::on_widget",
            location: "src/widget.rs:9",
        }
    }

    static COLUMNS: [Column; 1] = [Column::named("synced_id", ColumnKind::Integer, false)];

    static WIDGET: ReplicaDescriptor = ReplicaDescriptor {
        model: "Widget",
        topic: "v3_widgets",
        table: "widgets",
        columns: &COLUMNS,
        synced_id: "synced_id",
        synced_updated_at: None,
        synced_created_at: None,
        soft_delete: None,
        strategy: DestroyStrategy::Destroy,
        synced_data: None,
        named: NamedRoles::NONE,
        declared_by: "app::Widget",
        location: "src/widget.rs:1",
    };

    static WIDGETS: TopicDeclaration = TopicDeclaration {
        namespace: Some("v3"),
        name: "widgets",
        full_name: "v3_widgets",
        partition_key: None,
        partition_key_with: None,
        partitions: None,
        replication_factor: None,
        genesis_replica: true,
        tombstone: Tombstone::JsonNull,
        format: TopicFormat::Json,
        declared_by: "app::Widgets",
        location: "src/topics.rs:1",
    };

    static TYPO: HandlerDeclaration = handler("v3_widgets", "widget_craeted");
    static RIGHT: HandlerDeclaration = handler("v3_widgets", "widget_created");
    static ON_GENESIS: HandlerDeclaration = handler("v3_widgets_genesis", "widget_updated");
    static EVERY: HandlerDeclaration = handler("v3_widgets", "*");
    static CUSTOM: HandlerDeclaration = handler("v3_widgets", "widget_completed");
    static ELSEWHERE_TYPO: HandlerDeclaration = handler("v3_gadgets", "gadget_udpated");
    static ELSEWHERE_CUSTOM: HandlerDeclaration = handler("v3_gadgets", "gadget_completed");

    #[test]
    fn a_handler_event_typo_is_a_warning_with_the_event_it_meant() {
        let registry = Registry::new([&WIDGETS], []);
        let warnings = handler_warnings(&registry, &[&WIDGET], [&TYPO, &RIGHT, &ON_GENESIS, &EVERY]);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0].suggestion.as_deref(), Some("widget_created"));
        assert_eq!(
            warnings[0].to_string(),
            "handler app::on_widget (src/widget.rs:9) waits for event `widget_craeted` on topic `v3_widgets`, which \
             no model declared on that topic emits (widget_created, widget_destroyed, widget_updated); did you mean \
             `widget_created`? (if another service sends this event, the handler is right)"
        );
    }

    #[test]
    fn an_event_no_declared_model_emits_is_a_warning_even_without_a_near_name() {
        let registry = Registry::new([&WIDGETS], []);
        let warnings = handler_warnings(&registry, &[&WIDGET], [&CUSTOM]);
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].suggestion, None);
    }

    #[test]
    fn without_declared_models_only_a_misspelt_suffix_is_reported() {
        let registry = Registry::new([], []);
        let warnings = handler_warnings(&registry, &[&WIDGET], [&ELSEWHERE_TYPO, &ELSEWHERE_CUSTOM]);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0].suggestion.as_deref(), Some("gadget_updated"));
        assert!(warnings[0].to_string().contains("does not end in created, updated or destroyed"), "{}", warnings[0]);
    }

    static UNDECLARED: TopicReference =
        TopicReference { topic: "v3_gadgets", by: "replica app::Gadget", location: "src/gadget.rs:1" };

    #[test]
    fn only_the_registry_problems_of_consumed_topics_fail_a_consumer() {
        let registry = Registry::new([&WIDGETS], [&UNDECLARED]);
        assert_eq!(registry_problems(&registry, &["v3_widgets".to_owned()]), Ok(()));
        let error = registry_problems(&registry, &["v3_gadgets".to_owned()]).unwrap_err();
        assert!(matches!(&error.problems[..], [Problem::UndeclaredTopic { topic, .. }] if topic == "v3_gadgets"));
    }
}
