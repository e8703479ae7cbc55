//! The rules across a topic's keys: the full name `<namespace>_<name>` fits Kafka's limit,
//! and an Avro topic's schema files exist, parse, and have the key field.

use super::parse::MAX_TOPIC_NAME;
use super::{KeyConfig, Topic};
use crate::avro;
use crate::ctxt::Ctxt;

pub(super) fn check(cx: &Ctxt, topic: &Topic) {
    if let Some(namespace) = &topic.namespace {
        let full = format!("{namespace}_{}", topic.name);
        if full.len() > MAX_TOPIC_NAME {
            cx.syn_error(syn::Error::new(
                topic.name_span,
                format!("topic name `{full}` is longer than Kafka's {MAX_TOPIC_NAME} characters"),
            ));
        }
    }
    if let Some(format) = &topic.avro {
        match &format.key {
            KeyConfig::Field(field) => avro::check_has_field(cx, &format.schema, &field.value, field.span),
            KeyConfig::Schema(key_schema) => {
                if let (Some(key), Some(value)) = (key_schema.load(cx), format.schema.load(cx)) {
                    for field in key.fields.iter().filter(|field| value.field(&field.name).is_none()) {
                        cx.error_spanned_by(
                            &key_schema.name,
                            format!(
                                "the key schema's field `{}` is not a field of the Avro schema `{}`; a key is built \
                                 from the record's fields",
                                field.name,
                                format.schema.name.value()
                            ),
                        );
                    }
                }
            }
            KeyConfig::None | KeyConfig::Plain => {
                format.schema.load(cx);
            }
        }
    }
}
