//! The rule across a topic's keys: the full name `<namespace>_<name>` fits Kafka's limit.

use super::parse::MAX_TOPIC_NAME;
use super::Topic;
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
}
