//! Fresh databases and topics for each run of the demo, so that nothing of an earlier run
//! (rows, offsets, messages) can mix into the comparison.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use dionysus::config::{redact, KafkaConfig};
use dionysus::kafka::TopicSpec;
use dionysus::Registry;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;

/// A connection to `url`; the error says how to start PostgreSQL.
pub async fn connect(url: &str) -> anyhow::Result<AsyncPgConnection> {
    AsyncPgConnection::establish(url).await.map_err(|error| {
        anyhow!(
            "cannot connect to PostgreSQL at {} ({error})\n       \
             start it, or set DATABASE_URL to a server where user postgres may create databases",
            redact(url)
        )
    })
}

/// Drops and creates database `name` on the server of `server_url`; returns its URL.
pub async fn recreate_database(server_url: &str, name: &str) -> anyhow::Result<String> {
    let mut server = connect(server_url).await?;
    for statement in [format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"), format!("CREATE DATABASE \"{name}\"")]
    {
        server.batch_execute(&statement).await.with_context(|| format!("recreating database {name}"))?;
    }
    let (base, query) = server_url.split_once('?').map_or((server_url, None), |(base, query)| (base, Some(query)));
    let host_start = base.find("://").map_or(0, |scheme| scheme + 3);
    let base = base[host_start..].find('/').map_or(base, |slash| &base[..host_start + slash]);
    Ok(match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    })
}

/// Deletes the registry's topics and `dead_letters` where an earlier run left them (among
/// the broker's `existing` topics), and creates them afresh; returns them.
pub async fn recreate_topics(
    kafka: &KafkaConfig,
    registry: &Registry,
    dead_letters: &str,
    existing: &BTreeMap<String, i32>,
) -> anyhow::Result<Vec<TopicSpec>> {
    let mut specs = TopicSpec::for_registry(registry);
    specs.push(TopicSpec { name: dead_letters.to_owned(), partitions: 1, replication_factor: 1 });
    let stale: Vec<&str> =
        specs.iter().map(|spec| spec.name.as_str()).filter(|name| existing.contains_key(*name)).collect();
    if !stale.is_empty() {
        let admin: AdminClient<DefaultClientContext> = dionysus::kafka::client_config(kafka).create()?;
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        for result in admin.delete_topics(&stale, &options).await? {
            if let Err((topic, code)) = result {
                bail!("cannot delete topic {topic} left by an earlier run ({code}); use a fresh broker (scripts/demo starts one)");
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while dionysus::kafka::broker_topics(kafka).await?.keys().any(|name| stale.contains(&name.as_str())) {
            if Instant::now() > deadline {
                bail!("the topics of an earlier run are still there 30 s after deleting them: {stale:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    dionysus::kafka::create_topics(kafka, &specs).await?;
    Ok(specs)
}
