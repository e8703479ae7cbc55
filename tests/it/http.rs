//! The events API and the console over a real socket: every route with its 400/401/404
//! answers, the token rules, cross-site refusal, the body limit, the console's form tokens and
//! escaping. Rows are written with SQL, as the relay, the consumer and checkpointed handlers
//! would leave them.

use std::net::SocketAddr;
use std::time::Duration;

use diesel_async::{AsyncPgConnection, SimpleAsyncConnection};
use dionysus::http::{Api, HttpError};
use dionysus_tests::{create_topic, kafka_config, unique_name, TestDb};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// An answer: status, headers (names lower-case) and body.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Reply {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|error| panic!("not JSON ({error}): {}", self.body))
    }

    /// The `error.message` of a JSON error, checking its `status` matches.
    fn error(&self) -> String {
        let body = self.json();
        assert_eq!(body["error"]["status"], json!(self.status), "{}", self.body);
        body["error"]["message"].as_str().unwrap().to_owned()
    }
}

/// One HTTP/1.1 request on a fresh connection.
pub(crate) async fn send(address: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let read = async {
        let mut buffer = [0u8; 8192];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&buffer[..n]),
                // A server that answers before reading the whole body may reset the
                // connection after its answer.
                Err(error) if !raw.is_empty() => {
                    let _ = error;
                    break;
                }
                Err(error) => panic!("reading the answer: {error}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read).await.unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let chunked = headers.iter().any(|(name, value)| name == "transfer-encoding" && value.contains("chunked"));
    let body = if chunked { dechunk(rest) } else { rest.to_owned() };
    Reply { status, headers, body }
}

fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        body.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    body
}

/// A served API over a fresh migrated database.
pub(crate) struct Served {
    pub(crate) address: SocketAddr,
    pub(crate) db: TestDb,
    shutdown: CancellationToken,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Served {
    pub(crate) async fn start(token: Option<&str>, dead_letter_topic: Option<&str>) -> Served {
        let db = TestDb::migrated().await;
        let mut config = dionysus::Config::default();
        config.database_url = db.url.clone();
        config.kafka = kafka_config();
        if let Some(topic) = dead_letter_topic {
            config.consumer.dead_letter_topic = topic.to_owned();
        }
        let api = Api::with_pool(config, db.pool(4)).with_token(token.map(str::to_owned));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(dionysus::http::serve(listener, api, shutdown.clone()));
        Served { address, db, shutdown }
    }

    pub(crate) async fn get(&self, path: &str) -> Reply {
        send(self.address, "GET", path, &[], "").await
    }

    async fn call(&self, method: &str, path: &str, token: &str) -> Reply {
        send(self.address, method, path, &[("authorization", &format!("Bearer {token}"))], "").await
    }

    pub(crate) async fn sql(&self, statement: &str) {
        let mut conn: AsyncPgConnection = self.db.connection().await;
        conn.batch_execute(statement).await.unwrap();
    }
}

/// The session cookie and form token of a console page fetched with `headers`.
pub(crate) async fn form_token(served: &Served, path: &str, headers: &[(&str, &str)]) -> (String, String) {
    let page = send(served.address, "GET", path, headers, "").await;
    let session = page
        .header("set-cookie")
        .and_then(|cookie| cookie.split(';').next())
        .unwrap_or_else(|| panic!("no session cookie: {page:?}"))
        .to_owned();
    let marker = "name=\"csrf\" value=\"";
    let start = page.body.find(marker).unwrap_or_else(|| panic!("no form token: {}", page.body)) + marker.len();
    let token = page.body[start..].split('"').next().unwrap().to_owned();
    (session, token)
}

const EVENT: &str =
    "INSERT INTO dionysus_events (id, topic, group_id, entity_id, event_time, event_type, event_version, \
                     checksum, payload, key, \"partition\", \"offset\", created_at) VALUES ";

#[tokio::test]
async fn ping_and_health_answer_without_a_token() {
    let served = Served::start(Some("s3cret"), None).await;
    let ping = served.get("/ping").await;
    assert_eq!((ping.status, ping.body.as_str()), (200, "PONG"));
    let health = served.get("/health").await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
}

#[tokio::test]
async fn every_other_route_needs_the_bearer_token_when_one_is_set() {
    let served = Served::start(Some("s3cret"), None).await;
    for (method, path) in [
        ("GET", "/v1/events"),
        ("GET", "/v1/events/1"),
        ("POST", "/v1/events/1/retry"),
        ("GET", "/v1/failures"),
        ("GET", "/v1/failures/1"),
        ("POST", "/v1/failures/1/retry"),
        ("DELETE", "/v1/failures/1"),
        ("GET", "/v1/outbox/stats"),
        ("GET", "/v1/outbox/parked"),
        ("POST", "/v1/outbox/parked/1/retry"),
        ("GET", "/v1/dead-letters"),
        ("POST", "/v1/dead-letters/replay"),
    ] {
        let missing = send(served.address, method, path, &[], "").await;
        assert_eq!(missing.status, 401, "{method} {path}: {missing:?}");
        assert!(missing.error().contains("Authorization: Bearer"), "{missing:?}");
        assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
        let wrong = served.call(method, path, "guess").await;
        assert_eq!(wrong.status, 401, "{method} {path}: {wrong:?}");
        assert_eq!(wrong.error(), "the bearer token is wrong");
    }
    let stats = served.call("GET", "/v1/outbox/stats", "s3cret").await;
    assert_eq!(stats.status, 200, "{stats:?}");
    // The console asks to sign in; its cookie then opens the pages, never the JSON routes.
    let console = served.get("/console").await;
    assert_eq!(console.status, 401);
    assert!(console.body.contains("name=\"token\""), "{}", console.body);
    let (session, csrf) = form_token(&served, "/console/login", &[]).await;
    let wrong = send(
        served.address,
        "POST",
        "/console/login",
        &[("cookie", &session), ("content-type", "application/x-www-form-urlencoded")],
        &format!("csrf={csrf}&token=guess"),
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("That is not the token."), "{}", wrong.body);
    let signed = send(
        served.address,
        "POST",
        "/console/login",
        &[("cookie", &session), ("content-type", "application/x-www-form-urlencoded")],
        &format!("csrf={csrf}&token=s3cret"),
    )
    .await;
    assert_eq!(signed.status, 303, "{signed:?}");
    let login = signed.header("set-cookie").unwrap().split(';').next().unwrap().to_owned();
    assert!(login.starts_with("dionysus_login=") && !login.contains("s3cret"), "{login}");
    let cookies = format!("{session}; {login}");
    let page = send(served.address, "GET", "/console", &[("cookie", &cookies)], "").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let api = send(served.address, "GET", "/v1/outbox/stats", &[("cookie", &cookies)], "").await;
    assert_eq!(api.status, 401);
}

#[tokio::test]
async fn a_non_loopback_address_needs_a_token() {
    let db = TestDb::migrated().await;
    let mut config = dionysus::Config::default();
    config.database_url = db.url.clone();
    let open = Api::with_pool(config.clone(), db.pool(1));
    let everywhere: SocketAddr = "0.0.0.0:9396".parse().unwrap();
    let refused = open.check_address(everywhere).unwrap_err();
    assert!(matches!(refused, HttpError::TokenRequired { .. }));
    assert!(refused.to_string().contains("set DIONYSUS_API_TOKEN"), "{refused}");
    open.check_address("127.0.0.1:9396".parse().unwrap()).unwrap();
    open.check_address("[::1]:9396".parse().unwrap()).unwrap();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let served = dionysus::http::serve(listener, open, CancellationToken::new()).await;
    assert!(matches!(served, Err(HttpError::TokenRequired { .. })), "{served:?}");
    let guarded = Api::with_pool(config.clone(), db.pool(1)).with_token(Some("s3cret".to_owned()));
    guarded.check_address(everywhere).unwrap();
    let empty = Api::with_pool(config, db.pool(1)).with_token(Some(String::new()));
    assert!(matches!(empty.check_address(everywhere), Err(HttpError::EmptyToken)));
}

#[tokio::test]
async fn events_are_listed_filtered_and_shown_in_the_seed_shape() {
    let served = Served::start(None, None).await;
    served
        .sql(&format!(
            "{EVENT} (1, 'rentals', 'group-a', '7', '2016-09-19T19:35:26.854Z', 'create', 'v1', 'c1', '{{\"a\":\"b\"}}', \
             'k7', 0, 41, now()), \
             (2, 'rentals', 'group-b', '8', now(), 'update', 'v1', 'c2', '{{}}', NULL, 1, 9, now()), \
             (3, 'fees', 'group-a', '7', now(), 'create', 'v2', 'c3', '{{}}', NULL, 0, 1, now())"
        ))
        .await;
    let one = served.get("/v1/events/1").await;
    assert_eq!(one.status, 200, "{one:?}");
    let event = one.json();
    for (field, value) in [
        ("id", json!(1)),
        ("topic", json!("rentals")),
        ("group_id", json!("group-a")),
        ("entity_id", json!("7")),
        ("event_type", json!("create")),
        ("event_version", json!("v1")),
        ("checksum", json!("c1")),
        ("payload", json!("{\"a\":\"b\"}")),
    ] {
        assert_eq!(event[field], value, "{field} in {event}");
    }
    assert!(event["event_time"].as_str().unwrap().starts_with("2016-09-19T19:35:26.854"), "{event}");
    let ids = |reply: Reply| -> Vec<i64> {
        assert_eq!(reply.status, 200, "{reply:?}");
        reply.json().as_array().unwrap().iter().map(|event| event["id"].as_i64().unwrap()).collect()
    };
    let mut all = ids(served.get("/v1/events").await);
    all.sort_unstable();
    assert_eq!(all, [1, 2, 3]);
    assert_eq!(ids(served.get("/v1/events?topic=rentals&group_id=group-a").await), [1]);
    let mut entity = ids(served.get("/v1/events?entity_id=7").await);
    entity.sort_unstable();
    assert_eq!(entity, [1, 3]);
    assert_eq!(ids(served.get("/v1/events?event_type=update").await), [2]);
    assert_eq!(ids(served.get("/v1/events?limit=1&offset=0").await).len(), 1);
    assert_eq!(ids(served.get("/v1/events?limit=2&offset=2").await).len(), 1);
    // Blank filters (a form left empty) filter nothing.
    assert_eq!(ids(served.get("/v1/events?topic=&entity_id=").await).len(), 3);

    for (path, parameter) in [
        ("/v1/events?limit=1001", "limit"),
        ("/v1/events?limit=0", "limit"),
        ("/v1/events?limit=ten", "limit"),
        ("/v1/events?offset=-1", "offset"),
        ("/v1/events?colour=red", "colour"),
        ("/v1/events/abc", "id"),
        ("/v1/events/0", "id"),
        ("/v1/failures?limit=5000", "limit"),
        ("/v1/outbox/parked?limit=0", "limit"),
        ("/v1/dead-letters?from_offset=x", "from_offset"),
    ] {
        let bad = served.get(path).await;
        assert_eq!(bad.status, 400, "{path}: {bad:?}");
        assert!(bad.error().contains(&format!("`{parameter}`")), "{path}: {bad:?}");
    }
    let missing = served.get("/v1/events/999").await;
    assert_eq!((missing.status, missing.error()), (404, "no event with id 999".to_owned()));
    let retry = send(served.address, "POST", "/v1/events/999/retry", &[], "").await;
    assert_eq!((retry.status, retry.error()), (404, "no event with id 999".to_owned()));
    let nowhere = served.get("/v1/nothing").await;
    assert_eq!((nowhere.status, nowhere.error()), (404, "no route /v1/nothing".to_owned()));
    let page = served.get("/elsewhere").await;
    assert_eq!(page.status, 404);
    assert!(page.body.contains("nothing at /elsewhere"), "{}", page.body);
}

#[tokio::test]
async fn failures_are_listed_shown_deleted_and_retried_only_with_their_handler() {
    let served = Served::start(None, None).await;
    served
        .sql(
            "INSERT INTO dionysus_event_failures (id, topic, group_id, listener, entity_id, event_type, event_version, \
             checksum, payload, metadata, error_class, error_message, attempts) VALUES \
             (5, 'nobody_handles_this', 'group-a', 'missing_handler', '9', 'thing_created', 'v1', 'f5', '{\"id\":9}', \
              '{\"partition\":0}', 'HandlerError', 'boom <b>', 3)",
        )
        .await;
    let list = served.get("/v1/failures?topic=nobody_handles_this").await;
    assert_eq!(list.status, 200, "{list:?}");
    assert_eq!(list.json().as_array().unwrap().len(), 1, "{list:?}");
    let one = served.get("/v1/failures/5").await.json();
    assert_eq!((one["error_class"].as_str(), one["attempts"].as_i64()), (Some("HandlerError"), Some(3)), "{one}");
    // No handler for it in this binary: a conflict to resolve, not a server fault.
    let retry = send(served.address, "POST", "/v1/failures/5/retry", &[], "").await;
    assert_eq!(retry.status, 409, "{retry:?}");
    assert!(retry.error().contains("missing_handler"), "{retry:?}");
    let deleted = send(served.address, "DELETE", "/v1/failures/5", &[], "").await;
    assert_eq!((deleted.status, deleted.json()), (200, json!({"deleted": true, "id": 5})));
    let again = send(served.address, "DELETE", "/v1/failures/5", &[], "").await;
    assert_eq!((again.status, again.error()), (404, "no failure with id 5".to_owned()));
    assert_eq!(served.get("/v1/failures/5").await.status, 404);
    let retry = send(served.address, "POST", "/v1/failures/5/retry", &[], "").await;
    assert_eq!(retry.status, 404);
    assert_eq!(served.get("/v1/failures").await.json(), json!([]));
}

#[tokio::test]
async fn the_outbox_routes_count_list_and_retry_parked_rows() {
    let served = Served::start(None, None).await;
    served
        .sql(
            "INSERT INTO dionysus_outbox (id, resource_class, resource_id, event_name, topic, created_at) VALUES \
             (1, 'Rental', '1', 'rental_created', 'v3_rentals', now() - interval '90 seconds'); \
             INSERT INTO dionysus_outbox (id, resource_class, resource_id, event_name, topic, failed_at, error_class, \
             error_message, attempts) VALUES \
             (2, 'Rental', '2', 'rental_updated', 'v3_rentals', now(), 'SerializeError', '<script>alert(1)</script>', 12)",
        )
        .await;
    let stats = served.get("/v1/outbox/stats").await;
    assert_eq!(stats.status, 200);
    let stats = stats.json();
    assert_eq!(stats["backlog"], 1);
    assert!(stats["oldest_unpublished_seconds"].as_f64().unwrap() >= 89.0, "{stats}");
    assert_eq!(stats["parked"], json!({"total": 1, "by_error_class": {"SerializeError": 1}}));
    let parked = served.get("/v1/outbox/parked").await.json();
    assert_eq!(parked.as_array().unwrap().len(), 1, "{parked}");
    assert_eq!((parked[0]["id"].as_i64(), parked[0]["attempts"].as_i64()), (Some(2), Some(12)));
    // The overview shows them, escaped.
    let page = served.get("/console").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{}", page.body);
    assert!(!page.body.contains("<script>"), "{}", page.body);
    assert!(page.body.contains("action=\"/console/outbox/parked/2/retry\""), "{}", page.body);
    let unknown = send(served.address, "POST", "/v1/outbox/parked/1/retry", &[], "").await;
    assert_eq!((unknown.status, unknown.error()), (404, "no parked outbox row with id 1".to_owned()));
    let retried = send(served.address, "POST", "/v1/outbox/parked/2/retry", &[], "").await;
    assert_eq!((retried.status, retried.json()), (200, json!({"retried": true, "id": 2})));
    assert_eq!(served.get("/v1/outbox/stats").await.json()["backlog"], 2);
    assert_eq!(served.get("/v1/outbox/parked").await.json(), json!([]));
}

#[tokio::test]
async fn console_forms_need_their_session_token_and_mutations_refuse_other_sites() {
    let served = Served::start(None, None).await;
    served
        .sql(
            "INSERT INTO dionysus_outbox (id, resource_class, resource_id, event_name, topic, failed_at, error_class, \
             attempts) VALUES (3, 'Rental', '3', 'rental_updated', 'v3_rentals', now(), 'Timeout', 12)",
        )
        .await;
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let without = send(served.address, "POST", "/console/outbox/parked/3/retry", &form, "").await;
    assert_eq!(without.status, 403, "{without:?}");
    assert!(without.body.contains("reload the page"), "{}", without.body);
    let (session, csrf) = form_token(&served, "/console", &[]).await;
    let headers = [("cookie", session.as_str()), form[0]];
    let forged = send(served.address, "POST", "/console/outbox/parked/3/retry", &headers, "csrf=00ff").await;
    assert_eq!(forged.status, 403);
    let (other_session, _) = form_token(&served, "/console", &[]).await;
    let stolen = [("cookie", other_session.as_str()), form[0]];
    let replayed =
        send(served.address, "POST", "/console/outbox/parked/3/retry", &stolen, &format!("csrf={csrf}")).await;
    assert_eq!(replayed.status, 403, "a form token is bound to its session");
    let cross = [("cookie", session.as_str()), form[0], ("origin", "http://evil.example")];
    let refused = send(served.address, "POST", "/console/outbox/parked/3/retry", &cross, &format!("csrf={csrf}")).await;
    assert_eq!(refused.status, 403);
    assert!(refused.body.contains("cross-site"), "{}", refused.body);
    let fetch = [("sec-fetch-site", "cross-site")];
    let api = send(served.address, "POST", "/v1/outbox/parked/3/retry", &fetch, "").await;
    assert_eq!(api.status, 403, "{api:?}");
    assert!(api.error().contains("cross-site"));
    let posted =
        send(served.address, "POST", "/console/outbox/parked/3/retry", &headers, &format!("csrf={csrf}")).await;
    assert_eq!(posted.status, 303, "{posted:?}");
    let location = posted.header("location").unwrap();
    assert!(location.starts_with("/console?notice="), "{location}");
    let page = send(served.address, "GET", location, &[("cookie", &session)], "").await;
    assert!(page.body.contains("Outbox row 3 will be published again."), "{}", page.body);
    // Reading is GET; a GET never mutates.
    assert_eq!(served.get("/console/outbox/parked/3/retry").await.status, 405);
}

#[tokio::test]
async fn request_bodies_are_size_limited() {
    let served = Served::start(None, None).await;
    let big = format!("{{\"reason\": \"{}\"}}", "x".repeat(20 * 1024));
    let reply =
        send(served.address, "POST", "/v1/dead-letters/replay", &[("content-type", "application/json")], &big).await;
    assert_eq!(reply.status, 413, "{reply:?}");
    let bad = send(
        served.address,
        "POST",
        "/v1/dead-letters/replay",
        &[("content-type", "application/json")],
        "{\"colour\": 1}",
    )
    .await;
    assert_eq!(bad.status, 400, "{bad:?}");
    assert!(bad.error().starts_with("body:"), "{bad:?}");
}

#[tokio::test]
async fn consumer_groups_show_stored_offsets_and_lag() {
    let kafka = kafka_config();
    let topic = create_topic(&kafka, "http_lag", 1).await;
    let producer = dionysus::kafka::producer(&kafka).unwrap();
    for n in 0..5 {
        let payload = format!("{n}");
        producer.send(FutureRecord::<str, str>::to(&topic).payload(&payload), Duration::from_secs(10)).await.unwrap();
    }
    let served = Served::start(None, None).await;
    served
        .sql(&format!(
            "INSERT INTO dionysus_consumer_offsets (group_id, topic, \"partition\", next_offset, updated_at) VALUES \
             ('replicas', '{topic}', 0, 2, now())"
        ))
        .await;
    let page = served.get("/console").await;
    assert_eq!(page.status, 200);
    let row =
        page.body.split("<tr>").find(|row| row.contains(&topic)).unwrap_or_else(|| panic!("{}", page.body)).to_owned();
    assert!(row.contains("<td>replicas</td>"), "{row}");
    assert!(row.contains("<td class=\"num lag\">3</td>"), "{row}");
}

#[tokio::test]
async fn dead_letters_are_listed_and_replayed_to_their_source_topic() {
    let kafka = kafka_config();
    let source = create_topic(&kafka, "http_dlq_source", 1).await;
    let dead_letters = create_topic(&kafka, "http_dlq", 1).await;
    let producer = dionysus::kafka::producer(&kafka).unwrap();
    let headers = OwnedHeaders::new()
        .insert(Header { key: "dionysus-reason", value: Some("database_rejected") })
        .insert(Header { key: "dionysus-error", value: Some("value too long") })
        .insert(Header { key: "dionysus-source-topic", value: Some(source.as_str()) })
        .insert(Header { key: "dionysus-source-partition", value: Some("0") })
        .insert(Header { key: "dionysus-source-offset", value: Some("17") })
        .insert(Header { key: "trace", value: Some("abc") });
    let record = FutureRecord::<str, str>::to(&dead_letters).key("rental-1").payload("{\"a\":1}").headers(headers);
    producer.send(record, Duration::from_secs(10)).await.unwrap();

    let absent = Served::start(None, Some(&unique_name("http_no_dlq"))).await;
    assert_eq!(absent.get("/v1/dead-letters").await.json(), json!([]), "nothing dead-lettered yet");
    let replay = send(absent.address, "POST", "/v1/dead-letters/replay", &[], "").await;
    assert_eq!(replay.status, 404, "{replay:?}");

    let served = Served::start(None, Some(&dead_letters)).await;
    let listed = served.get("/v1/dead-letters?reason=database_rejected").await;
    assert_eq!(listed.status, 200, "{listed:?}");
    let letter = &listed.json()[0];
    assert_eq!(letter["source_topic"], json!(source));
    assert_eq!((letter["source_offset"].as_i64(), letter["key"].as_str()), (Some(17), Some("rental-1")), "{letter}");
    assert_eq!(served.get("/v1/dead-letters?reason=unknown_model").await.json(), json!([]));
    let page = served.get("/console/dead-letters").await;
    assert!(page.body.contains("value too long") && page.body.contains("rental-1"), "{}", page.body);

    let replayed = send(
        served.address,
        "POST",
        "/v1/dead-letters/replay",
        &[("content-type", "application/json")],
        "{\"reason\": \"database_rejected\"}",
    )
    .await;
    assert_eq!(replayed.status, 200, "{replayed:?}");
    assert_eq!(replayed.json()["replayed"], 1, "{replayed:?}");
    let again = send(served.address, "POST", "/v1/dead-letters/replay", &[], "").await;
    assert_eq!(again.json()["replayed"], 0, "a replay sends each dead letter once: {again:?}");

    use rdkafka::consumer::{Consumer as _, StreamConsumer};
    use rdkafka::Message as _;
    let reader: StreamConsumer =
        dionysus_tests::consumer_config(&kafka, &unique_name("http_dlq_reader")).create().unwrap();
    reader.subscribe(&[&source]).unwrap();
    let message = tokio::time::timeout(Duration::from_secs(30), reader.recv()).await.unwrap().unwrap();
    assert_eq!(message.key(), Some("rental-1".as_bytes()));
    assert_eq!(message.payload(), Some("{\"a\":1}".as_bytes()));
    use rdkafka::message::Headers as _;
    let names: Vec<String> = message.headers().unwrap().iter().map(|h| h.key.to_owned()).collect();
    assert_eq!(names, ["trace"], "the dead-letter headers are removed");
}

/// `dionysus serve` refuses a non-loopback address without a token, as a usage mistake
/// naming the fix, before it binds anything; `--help` documents the default address and the
/// token.
#[tokio::test]
async fn serve_refuses_a_public_address_without_a_token() {
    let db = TestDb::migrated().await;
    let registry = dionysus::registry::Registry::new([], []);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let args = ["dionysus", "--database-url", db.url.as_str(), "serve", "--listen", "0.0.0.0:0"];
    let code = dionysus::cli::run_with(args, &registry, &mut out, &mut err).await;
    let err = String::from_utf8(err).unwrap();
    assert_eq!(code, std::process::ExitCode::from(2), "{err}");
    assert!(err.contains("not a loopback address") && err.contains("set DIONYSUS_API_TOKEN"), "{err}");
    let (mut help, mut err) = (Vec::new(), Vec::new());
    dionysus::cli::run_with(["dionysus", "serve", "--help"], &registry, &mut help, &mut err).await;
    let help = String::from_utf8(help).unwrap();
    assert!(help.contains("127.0.0.1:9396") && help.contains("DIONYSUS_API_TOKEN"), "{help}");
}

/// A recorded failure retried through the API runs its handler on the stored message: the
/// failure is gone and the acknowledged event is saved; retrying that event runs the handler
/// again.
#[tokio::test]
async fn a_failure_retried_through_the_api_becomes_an_event() {
    let served = Served::start(None, None).await;
    let message = dionysus::testing::envelope("Thing", "thing_created", json!({ "id": 77 }));
    let payload = String::from_utf8(message.payload().unwrap().to_vec()).unwrap();
    served
        .sql(&format!(
            "INSERT INTO dionysus_event_failures (id, topic, group_id, listener, entity_id, event_type, checksum, \
             payload, error_class, error_message, \"partition\", \"offset\") VALUES \
             (8, 'console_browser_things', 'api-group', '', '77', 'thing_created', 'api-checksum', '{}'::jsonb, \
              'Timeout', 'later', 0, 3)",
            payload.replace('\'', "''")
        ))
        .await;
    let retried = send(served.address, "POST", "/v1/failures/8/retry", &[], "").await;
    assert_eq!(retried.status, 200, "{retried:?}");
    let body = retried.json();
    assert_eq!((body["retried"].as_bool(), body["acknowledged"].as_bool()), (Some(true), Some(true)), "{body}");
    let event_id = body["event_id"].as_i64().unwrap();
    assert_eq!(served.get("/v1/failures/8").await.status, 404);
    let event = served.get(&format!("/v1/events/{event_id}")).await.json();
    assert_eq!((event["entity_id"].as_str(), event["group_id"].as_str()), (Some("77"), Some("api-group")), "{event}");
    let again = send(served.address, "POST", &format!("/v1/events/{event_id}/retry"), &[], "").await;
    assert_eq!((again.status, again.json()["retried"].as_bool()), (200, Some(true)), "{again:?}");
}
