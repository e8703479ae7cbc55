//! Names on the wire, derived from model names exactly as dionysus-rb derives them from Ruby
//! class names: message keys (`"Rental:1"`), event names (`"bookings_fee_updated"`), and the
//! English inflections (ActiveSupport's default rules) used for sideload and link names
//! (`BookingsFee` → `bookings_fees` / `bookings_fee`, `bookings` → `booking`).
//!
//! This module owns those string rules only; the envelope around them lives in `envelope`.

use std::sync::OnceLock;

use regex::Regex;

/// The Kafka message key of a record: `"<ModelName>:<id>"` (W-4), e.g. `Bookings::Fee:7`.
pub fn message_key(model_name: &str, id: impl std::fmt::Display) -> String {
    format!("{model_name}:{id}")
}

/// ActiveSupport's `underscore`: `Bookings::Fee` → `bookings/fee`, `HTTPServer` →
/// `http_server`, `ExampleResource` → `example_resource`.
pub fn underscore(name: &str) -> String {
    let word = name.replace("::", "/");
    let chars: Vec<char> = word.chars().collect();
    let mut out = String::with_capacity(word.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        out.push(c);
        let next = chars.get(i + 1).copied();
        let after = chars.get(i + 2).copied();
        let boundary = match next {
            // `([A-Z]+)(?=[A-Z][a-z])`: the end of a run of capitals before a capitalised word.
            Some(n) if c.is_ascii_uppercase() && n.is_ascii_uppercase() => {
                after.is_some_and(|a| a.is_ascii_lowercase())
            }
            // `([a-z\d])(?=[A-Z])`
            Some(n) if (c.is_ascii_lowercase() || c.is_ascii_digit()) && n.is_ascii_uppercase() => true,
            _ => false,
        };
        if boundary {
            out.push('_');
        }
    }
    out.replace('-', "_").to_lowercase()
}

/// The event-name prefix of a model: ActiveModel's `model_name.singular`, i.e. the
/// underscored name with `/` turned into `_` (W-13). `Bookings::Fee` and `BookingsFee` both
/// give `bookings_fee`.
pub fn event_prefix(model_name: &str) -> String {
    underscore(model_name).replace('/', "_")
}

/// What happened to a record.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// `<model>_created`
    Created,
    /// `<model>_updated`
    Updated,
    /// `<model>_destroyed`
    Destroyed,
}

impl EventKind {
    /// The suffix, e.g. `"created"`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Updated => "updated",
            EventKind::Destroyed => "destroyed",
        }
    }

    /// Classifies an event name by its suffix, as dionysus-rb's consumer does (C-7): a name
    /// *ending with* `created`, `updated` or `destroyed` counts as that event, so
    /// `rental_recreated` is a creation; anything else (`rental_completed`) is `None`, and so
    /// is an error event (`event.error.rental_updated`, written by a consumer's handler).
    pub fn classify(event_name: &str) -> Option<EventKind> {
        // An error event (`event.error.rental_updated`) reports a failure; it changes nothing.
        if event_name.starts_with("event.error.") {
            return None;
        }
        [EventKind::Created, EventKind::Updated, EventKind::Destroyed]
            .into_iter()
            .find(|kind| event_name.ends_with(kind.as_str()))
    }
}

/// `<prefix>_<created|updated|destroyed>` for a model, e.g. `rental_created`.
pub fn event_name(model_name: &str, kind: EventKind) -> String {
    format!("{}_{}", event_prefix(model_name), kind.as_str())
}

/// The names under which a `with(...)` dependency is sideloaded (W-10): its plural, then its
/// singular model name. `BookingsFee` → `["bookings_fees", "bookings_fee"]`.
pub fn include_names(model_name: &str) -> [String; 2] {
    let singular = event_prefix(model_name);
    [pluralize(&singular), singular]
}

struct Rule {
    pattern: Regex,
    replacement: String,
}

struct Inflections {
    plurals: Vec<Rule>,
    singulars: Vec<Rule>,
    uncountables: Vec<&'static str>,
}

/// ActiveSupport's irregular words, in definition order: `(singular, plural)`.
const IRREGULARS: &[(&str, &str)] = &[
    ("person", "people"),
    ("man", "men"),
    ("child", "children"),
    ("sex", "sexes"),
    ("move", "moves"),
    ("zombie", "zombies"),
];

fn rules(list: Vec<(String, String)>) -> Vec<Rule> {
    // Later rules take precedence, as in ActiveSupport: keep them last-first.
    list.into_iter()
        .rev()
        .filter_map(|(pattern, replacement)| {
            Regex::new(&format!("(?i){pattern}")).ok().map(|pattern| Rule { pattern, replacement })
        })
        .collect()
}

fn owned(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
}

fn inflections() -> &'static Inflections {
    static INFLECTIONS: OnceLock<Inflections> = OnceLock::new();
    INFLECTIONS.get_or_init(|| {
        let mut plurals = owned(&[
            ("$", "s"),
            ("s$", "s"),
            ("^(ax|test)is$", "${1}es"),
            ("(octop|vir)us$", "${1}i"),
            ("(octop|vir)i$", "${1}i"),
            ("(alias|status)$", "${1}es"),
            ("(bu)s$", "${1}ses"),
            ("(buffal|tomat)o$", "${1}oes"),
            ("([ti])um$", "${1}a"),
            ("([ti])a$", "${1}a"),
            ("sis$", "ses"),
            ("(?:([^f])fe|([lr])f)$", "${1}${2}ves"),
            ("(hive)$", "${1}s"),
            ("([^aeiouy]|qu)y$", "${1}ies"),
            ("(x|ch|ss|sh)$", "${1}es"),
            ("(matr|vert|ind)(?:ix|ex)$", "${1}ices"),
            ("^(m|l)ouse$", "${1}ice"),
            ("^(m|l)ice$", "${1}ice"),
            ("^(ox)$", "${1}en"),
            ("^(oxen)$", "${1}"),
            ("(quiz)$", "${1}zes"),
        ]);
        let mut singulars = owned(&[
            ("s$", ""),
            ("(ss)$", "${1}"),
            ("(n)ews$", "${1}ews"),
            ("([ti])a$", "${1}um"),
            ("((a)naly|(b)a|(d)iagno|(p)arenthe|(p)rogno|(s)ynop|(t)he)(sis|ses)$", "${1}sis"),
            ("(^analy)(sis|ses)$", "${1}sis"),
            ("([^f])ves$", "${1}fe"),
            ("(hive)s$", "${1}"),
            ("(tive)s$", "${1}"),
            ("([lr])ves$", "${1}f"),
            ("([^aeiouy]|qu)ies$", "${1}y"),
            ("(s)eries$", "${1}eries"),
            ("(m)ovies$", "${1}ovie"),
            ("(x|ch|ss|sh)es$", "${1}"),
            ("^(m|l)ice$", "${1}ouse"),
            ("(bus)(es)?$", "${1}"),
            ("(o)es$", "${1}"),
            ("(shoe)s$", "${1}"),
            ("(cris|test)(is|es)$", "${1}is"),
            ("^(a)x[ie]s$", "${1}xis"),
            ("(octop|vir)(us|i)$", "${1}us"),
            ("(alias|status)(es)?$", "${1}"),
            ("^(ox)en", "${1}"),
            ("(vert|ind)ices$", "${1}ex"),
            ("(matr)ices$", "${1}ix"),
            ("(quiz)zes$", "${1}"),
            ("(database)s$", "${1}"),
        ]);
        // Irregulars are ordinary rules defined last (so they win), keeping the first
        // letter's case: `(p)erson$` → `${1}eople`. Like ActiveSupport they have no word
        // boundary, so `human` pluralizes to `humen` there and here alike.
        for (singular, plural) in IRREGULARS {
            let (s0, s_rest) = singular.split_at(1);
            let (p0, p_rest) = plural.split_at(1);
            plurals.push((format!("({s0}){s_rest}$"), format!("${{1}}{p_rest}")));
            plurals.push((format!("({p0}){p_rest}$"), format!("${{1}}{p_rest}")));
            singulars.push((format!("({s0}){s_rest}$"), format!("${{1}}{s_rest}")));
            singulars.push((format!("({p0}){p_rest}$"), format!("${{1}}{s_rest}")));
        }
        Inflections {
            plurals: rules(plurals),
            singulars: rules(singulars),
            uncountables: vec![
                "equipment",
                "information",
                "rice",
                "money",
                "species",
                "series",
                "fish",
                "sheep",
                "jeans",
                "police",
            ],
        }
    })
}

/// ActiveSupport leaves a word alone when its last word (`\b<word>\Z`) is uncountable;
/// `_` joins words, so `bookings_fish` is not uncountable but `fish` is.
fn is_uncountable(word: &str) -> bool {
    let lower = word.to_lowercase();
    inflections().uncountables.iter().any(|uncountable| {
        lower
            .strip_suffix(uncountable)
            .is_some_and(|before| !before.ends_with(|c: char| c.is_alphanumeric() || c == '_'))
    })
}

fn inflect(word: &str, rules: &[Rule]) -> String {
    if word.is_empty() || is_uncountable(word) {
        return word.to_owned();
    }
    rules
        .iter()
        .find(|rule| rule.pattern.is_match(word))
        .map_or_else(|| word.to_owned(), |rule| rule.pattern.replace(word, rule.replacement.as_str()).into_owned())
}

/// ActiveSupport's default English `pluralize`: `bookings_fee` → `bookings_fees`, `tax` →
/// `taxes`, `category` → `categories`, `person` → `people`.
pub fn pluralize(word: &str) -> String {
    inflect(word, &inflections().plurals)
}

/// ActiveSupport's default English `singularize`: `bookings` → `booking`, `taxes` → `tax`,
/// `users` → `user`, `people` → `person`.
pub fn singularize(word: &str) -> String {
    inflect(word, &inflections().singulars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_event_names_and_model_names_follow_the_gem() {
        // Vector w18.
        let cases = [
            ("ExampleResource", 1, "ExampleResource:1", "example_resource"),
            (
                "ExamplePublishableCancelableResource",
                3,
                "ExamplePublishableCancelableResource:3",
                "example_publishable_cancelable_resource",
            ),
            ("Bookings::Fee", 7, "Bookings::Fee:7", "bookings_fee"),
            ("BookingsFee", 7, "BookingsFee:7", "bookings_fee"),
        ];
        for (class_name, id, key, prefix) in cases {
            assert_eq!(message_key(class_name, id), key);
            assert_eq!(event_prefix(class_name), prefix);
        }
        assert_eq!(
            event_name("ExamplePublishableCancelableResource", EventKind::Destroyed),
            "example_publishable_cancelable_resource_destroyed"
        );
    }

    #[test]
    fn underscore_matches_active_support() {
        assert_eq!(underscore("HTTPServer"), "http_server");
        assert_eq!(underscore("Rental2Fee"), "rental2_fee");
        assert_eq!(underscore("ABC"), "abc");
        assert_eq!(underscore("Admin::UserSession"), "admin/user_session");
        assert_eq!(underscore("rental"), "rental");
    }

    #[test]
    fn include_names_are_plural_then_singular() {
        assert_eq!(include_names("BookingsFee"), ["bookings_fees".to_owned(), "bookings_fee".to_owned()]);
        assert_eq!(include_names("Account"), ["accounts".to_owned(), "account".to_owned()]);
        assert_eq!(include_names("Booking"), ["bookings".to_owned(), "booking".to_owned()]);
    }

    #[test]
    fn inflections_match_active_support_defaults() {
        for (singular, plural) in [
            ("booking", "bookings"),
            ("tax", "taxes"),
            ("user", "users"),
            ("category", "categories"),
            ("person", "people"),
            ("bookings_fee", "bookings_fees"),
            ("status", "statuses"),
            ("address", "addresses"),
            ("wife", "wives"),
            ("half", "halves"),
            ("matrix", "matrices"),
            ("mouse", "mice"),
            ("sheep", "sheep"),
            ("information", "information"),
            ("medium", "media"),
            ("analysis", "analyses"),
            ("child", "children"),
            ("quiz", "quizzes"),
            ("bus", "buses"),
        ] {
            assert_eq!(pluralize(singular), plural, "pluralize({singular})");
            assert_eq!(singularize(plural), singular, "singularize({plural})");
        }
        assert_eq!(singularize("series"), "series");
        assert_eq!(singularize("databases"), "database");
        assert_eq!(singularize("news"), "news");
    }

    #[test]
    fn event_classification_is_by_suffix() {
        assert_eq!(EventKind::classify("rental_created"), Some(EventKind::Created));
        assert_eq!(EventKind::classify("rental_recreated"), Some(EventKind::Created));
        assert_eq!(EventKind::classify("rental_destroyed"), Some(EventKind::Destroyed));
        assert_eq!(EventKind::classify("rental_completed"), None);
        assert_eq!(EventKind::classify("booking_canceled"), None);
    }

    #[test]
    fn an_error_event_is_no_change_whatever_its_suffix() {
        assert_eq!(EventKind::classify("event.error.rental_updated"), None);
        assert_eq!(EventKind::classify("event.error.rental_destroyed"), None);
    }
}
