//! Avro topics: the test schema registry against the documented request and response shapes
//! of the Confluent REST API (raw HTTP over its socket), the registry client against it
//! (ids, cache, latest version, compatibility, a registry that goes down and comes back),
//! the subjects of the declared Avro topics, and `schemas register|check`. No real registry
//! runs in these tests: [`TestRegistry`] stands in for one.

use std::time::Duration;

use dionysus::avro::registry::{Compatibility, RegistryClient, RegistryError};
use dionysus::avro::schemas::LocalSchemas;
use dionysus::avro::{codec, framing, topic_schemas, SubjectSchema};
use dionysus::registry::{Registry, Topic};
use dionysus::testing::TestRegistry;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[dionysus::topic(name = "avro_it_rentals", format = "avro", schema = "com.example.Rental", key(field = id))]
pub struct AvroRentals;

const V1: &str = r#"{"type": "record", "name": "Item", "namespace": "com.example", "fields": [
    {"name": "id", "type": "long"}]}"#;
const V2_ADDED_DEFAULT: &str = r#"{"type": "record", "name": "Item", "namespace": "com.example", "fields": [
    {"name": "id", "type": "long"}, {"name": "name", "type": "string", "default": ""}]}"#;
const V2_ADDED_REQUIRED: &str = r#"{"type": "record", "name": "Item", "namespace": "com.example", "fields": [
    {"name": "id", "type": "long"}, {"name": "name", "type": "string"}]}"#;
const V3_ADDED_REQUIRED: &str = r#"{"type": "record", "name": "Item", "namespace": "com.example", "fields": [
    {"name": "id", "type": "long"}, {"name": "name", "type": "string", "default": ""},
    {"name": "floors", "type": "int"}]}"#;

/// One HTTP/1.1 exchange: the status, the content type and the JSON body.
async fn http(registry: &TestRegistry, method: &str, path: &str, body: Option<Value>) -> (u16, String, Value) {
    let address = registry.url().trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let body = body.map(|body| body.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nAccept: application/vnd.schemaregistry.v1+json\r\n\
         Content-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-type: ").map(str::to_owned))
        .unwrap_or_default();
    (status, content_type, serde_json::from_str(body).unwrap())
}

#[tokio::test]
async fn test_registry_answers_the_documented_shapes() {
    let registry = TestRegistry::start().await.unwrap();
    let content_type = "application/vnd.schemaregistry.v1+json";

    // POST /subjects/{subject}/versions {"schema": "..."} -> {"id": n}
    let (status, kind, body) =
        http(&registry, "POST", "/subjects/items-value/versions", Some(json!({ "schema": V1 }))).await;
    assert_eq!((status, kind.as_str()), (200, content_type));
    let id = body["id"].as_u64().unwrap();
    assert_eq!(body, json!({ "id": id }));
    // The same schema again keeps its id and adds no version.
    let (_, _, again) = http(&registry, "POST", "/subjects/items-value/versions", Some(json!({ "schema": V1 }))).await;
    assert_eq!(again, json!({ "id": id }));

    // GET /schemas/ids/{id} -> {"schema": "..."}
    let (status, _, body) = http(&registry, "GET", &format!("/schemas/ids/{id}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({ "schema": V1 }));

    // GET /subjects/{subject}/versions/latest -> {"subject", "version", "id", "schema"}
    let (status, _, body) = http(&registry, "GET", "/subjects/items-value/versions/latest", None).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({ "subject": "items-value", "version": 1, "id": id, "schema": V1 }));

    // POST /compatibility/subjects/{subject}/versions/latest -> {"is_compatible": bool}
    let path = "/compatibility/subjects/items-value/versions/latest";
    let (status, _, body) = http(&registry, "POST", path, Some(json!({ "schema": V2_ADDED_DEFAULT }))).await;
    assert_eq!((status, body), (200, json!({ "is_compatible": true })));
    let (_, _, body) = http(&registry, "POST", path, Some(json!({ "schema": V2_ADDED_REQUIRED }))).await;
    assert_eq!(body, json!({ "is_compatible": false }));

    // Errors: {"error_code": n, "message": "..."} with the documented codes.
    let (status, kind, body) = http(&registry, "GET", "/subjects/nothing-value/versions/latest", None).await;
    assert_eq!((status, kind.as_str(), &body["error_code"]), (404, content_type, &json!(40401)));
    assert!(body["message"].is_string());
    let (status, _, body) = http(&registry, "GET", "/schemas/ids/999", None).await;
    assert_eq!((status, &body["error_code"]), (404, &json!(40403)));
    let (status, _, body) =
        http(&registry, "POST", "/subjects/items-value/versions", Some(json!({ "schema": "{\"type\": \"nope\"}" })))
            .await;
    assert_eq!((status, &body["error_code"]), (422, &json!(42201)));
    let (status, _, body) =
        http(&registry, "POST", "/subjects/items-value/versions", Some(json!({ "schema": V2_ADDED_REQUIRED }))).await;
    assert_eq!((status, &body["error_code"]), (409, &json!(409)));

    // GET /subjects -> ["..."]
    let (_, _, body) = http(&registry, "GET", "/subjects", None).await;
    assert_eq!(body, json!(["items-value"]));
}

#[tokio::test]
async fn client_registers_fetches_and_checks_compatibility() {
    let registry = TestRegistry::start().await.unwrap();
    let client = RegistryClient::new(&registry.url()).unwrap();
    assert_eq!(client.compatibility("items-value", V1).await.unwrap(), Compatibility::NewSubject);
    assert_eq!(client.latest("items-value").await.unwrap(), None);

    let v1 = client.register("items-value", V1).await.unwrap();
    let v2 = client.register("items-value", V2_ADDED_DEFAULT).await.unwrap();
    assert_ne!(v1, v2);
    let latest = client.latest("items-value").await.unwrap().unwrap();
    assert_eq!((latest.version, latest.id), (2, v2));
    assert_eq!(client.compatibility("items-value", V2_ADDED_DEFAULT).await.unwrap(), Compatibility::Compatible);
    assert_eq!(client.compatibility("items-value", V3_ADDED_REQUIRED).await.unwrap(), Compatibility::Incompatible);
    let refused = client.register("items-value", V3_ADDED_REQUIRED).await.unwrap_err();
    assert!(matches!(refused, RegistryError::Rejected { status: 409, .. }), "{refused}");
    assert!(!refused.is_unreachable());

    // A writer's schema by id reads a framed datum written with it, resolved against an
    // older reader's schema.
    let writer = client.schema_by_id(v2).await.unwrap();
    let datum = codec::encode(&writer, &json!({"id": 5, "name": "five"}), &codec::AutoFields::default()).unwrap();
    let message = framing::frame(v2, &datum);
    let (id, datum) = framing::unframe(&message).unwrap();
    let writer = client.schema_by_id(id).await.unwrap();
    let reader = apache_avro_schema(V1);
    assert_eq!(codec::decode(&writer, &reader, datum).unwrap(), json!({"id": 5}));
}

fn apache_avro_schema(text: &str) -> dionysus::avro::Schema {
    dionysus::avro::Schema::parse_str(text).unwrap()
}

#[tokio::test]
async fn a_registry_down_is_unreachable_then_answers_again_with_what_it_held() {
    let mut registry = TestRegistry::start().await.unwrap();
    let client = RegistryClient::new(&registry.url()).unwrap().with_timeout(Duration::from_secs(2));
    let id = client.register("items-value", V1).await.unwrap();

    registry.stop();
    let fresh = RegistryClient::new(&registry.url()).unwrap().with_timeout(Duration::from_secs(2));
    let error = fresh.schema_by_id(id).await.unwrap_err();
    assert!(error.is_unreachable(), "{error}");
    // What the client has seen stays cached while the registry is down.
    assert_eq!(client.register("items-value", V1).await.unwrap(), id);
    assert!(client.schema_by_id(id).await.is_err_and(|error| error.is_unreachable()));

    registry.resume().await.unwrap();
    assert_eq!(fresh.register("items-value", V1).await.unwrap(), id);
    assert!(fresh.schema_by_id(id).await.is_ok());
}

#[test]
fn declared_avro_topics_have_value_and_key_subjects() {
    let registry = Registry::new([AvroRentals::DECLARATION], []);
    let subjects = topic_schemas(&registry, LocalSchemas::global().unwrap()).unwrap();
    let names: Vec<(&str, &str)> =
        subjects.iter().map(|subject| (subject.subject.as_str(), subject.schema.as_str())).collect();
    assert_eq!(
        names,
        [("avro_it_rentals-value", "com.example.Rental"), ("avro_it_rentals-key", "com.example.Rental_key")]
    );
    let key: Value = serde_json::from_str(&subjects[1].definition).unwrap();
    assert_eq!(key["fields"], json!([{"name": "id", "type": "long"}]));
    // The value schema is the file's text, embedded when the crate was compiled.
    let file =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/com/example/Rental.avsc")).unwrap();
    assert_eq!(subjects[0].definition, file);
}

#[tokio::test]
async fn registering_the_subjects_gives_each_an_id_and_they_are_then_compatible() {
    let registry = TestRegistry::start().await.unwrap();
    let client = RegistryClient::new(&registry.url()).unwrap();
    let declared = Registry::new([AvroRentals::DECLARATION], []);
    let subjects: Vec<SubjectSchema> = topic_schemas(&declared, LocalSchemas::global().unwrap()).unwrap();
    for subject in &subjects {
        client.register(&subject.subject, &subject.definition).await.unwrap();
        assert_eq!(
            client.compatibility(&subject.subject, &subject.definition).await.unwrap(),
            Compatibility::Compatible
        );
    }
    assert_eq!(
        registry.subjects().into_iter().collect::<Vec<_>>(),
        [("avro_it_rentals-key".to_owned(), 1), ("avro_it_rentals-value".to_owned(), 1)]
    );
}

/// `schemas check` before and after `schemas register`, and its exit code when a registered
/// version cannot be read by the local schema.
#[tokio::test(flavor = "multi_thread")]
async fn schemas_register_then_check_from_the_command_line() {
    let registry = TestRegistry::start().await.unwrap();
    let url = registry.url();
    let declared: &'static Registry = Box::leak(Box::new(Registry::new([AvroRentals::DECLARATION], [])));
    let run = |command: &'static str| {
        let url = url.clone();
        async move {
            let argv = ["dionysus", "schemas", command, "--registry-url", url.as_str()].map(str::to_owned).to_vec();
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let code = dionysus::cli::run_until(argv, declared, &mut out, &mut err, Default::default()).await;
            (code, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
        }
    };
    let (code, out, _) = run("check").await;
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    assert!(out.contains("new subject   avro_it_rentals-value  com.example.Rental"), "{out}");
    let (code, out, _) = run("register").await;
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    assert!(out.contains("registered avro_it_rentals-value  com.example.Rental (id 1)"), "{out}");
    assert!(out.contains("registered avro_it_rentals-key  com.example.Rental_key (id 2)"), "{out}");

    // A newer version the local schema cannot read: it lacks `name`, which the local one
    // requires.
    let client = RegistryClient::new(&registry.url()).unwrap();
    let without_name = r#"{"type": "record", "name": "Rental", "namespace": "com.example", "fields": [
        {"name": "id", "type": "long"}]}"#;
    client.register("avro_it_rentals-value", without_name).await.unwrap();
    let (code, out, err) = run("check").await;
    assert_eq!(code, std::process::ExitCode::from(1), "{out}{err}");
    assert!(out.contains("INCOMPATIBLE  avro_it_rentals-value  com.example.Rental"), "{out}");
    assert!(out.contains("compatible    avro_it_rentals-key"), "{out}");
    assert!(err.contains("not compatible"), "{err}");
}
