//! Declared topics reach the broker: creation from the registry (genesis replicas included)
//! and partition counts read back.

use dionysus::kafka::{self, TopicCreation, TopicSpec};
use dionysus::registry::{Registry, TopicDeclaration};
use dionysus::Topic;
use dionysus_tests::{kafka_config, unique_name};

#[dionysus::topic(namespace = "it", name = "accounts", partition_key = "id", partitions = 3, genesis_replica)]
struct Accounts;

#[tokio::test(flavor = "multi_thread")]
async fn declared_topics_are_created_with_their_partitions() {
    let kafka = kafka_config();
    // Give this run's copy of the declaration a unique name on the shared broker.
    let name: &'static str = Box::leak(unique_name("it_accounts").into_boxed_str());
    let declaration: &'static TopicDeclaration =
        Box::leak(Box::new(TopicDeclaration { full_name: name, ..*Accounts::DECLARATION }));
    let registry = Registry::new([declaration], []);
    registry.validate().unwrap();

    let specs = TopicSpec::for_registry(&registry);
    assert_eq!(specs.len(), 2, "the topic and its genesis replica");
    let created = kafka::create_topics(&kafka, &specs).await.unwrap();
    assert!(created.iter().all(|c| matches!(c, TopicCreation::Created(_))), "{created:?}");
    let again = kafka::create_topics(&kafka, &specs).await.unwrap();
    assert!(again.iter().all(|c| matches!(c, TopicCreation::AlreadyExists(_))), "{again:?}");

    let genesis = format!("{name}_genesis");
    let missing = unique_name("missing");
    let counts = kafka::partition_counts(&kafka, &[name.to_owned(), genesis.clone(), missing.clone()]).await.unwrap();
    assert_eq!(counts[name], Some(3));
    assert_eq!(counts[&genesis], Some(3));
    assert_eq!(counts[&missing], None);
}

#[test]
fn the_macro_registers_the_declaration_globally() {
    let declared = Registry::global().topic("it_accounts").expect("registered through inventory");
    assert_eq!(declared.partitions, Some(3));
    assert!(declared.genesis_replica);
    assert_eq!(declared.partition_key, Some("id"));
    assert!(declared.declared_by.ends_with("topics::Accounts"), "{}", declared.declared_by);
    assert_eq!(Accounts::NAME, "it_accounts");
}
