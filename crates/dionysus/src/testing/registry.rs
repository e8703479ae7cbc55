//! A schema registry for tests (features `testing` and `avro`): the subset of the Confluent
//! REST API that dionysus uses, served over a real socket on 127.0.0.1 — register a schema
//! under a subject (`POST /subjects/{subject}/versions`), a schema by id
//! (`GET /schemas/ids/{id}`), a subject's latest version
//! (`GET /subjects/{subject}/versions/latest`), the compatibility of a schema with it
//! (`POST /compatibility/subjects/{subject}/versions/latest`, level `BACKWARD`), and the
//! subjects (`GET /subjects`). Answers use the API's content type and error body
//! (`{"error_code": …, "message": …}`). It can be stopped and started again on the same
//! port, to test what happens while a registry is down.
//!
//! No real registry runs in dionysus's tests: this one stands in for it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::Schema;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::avro::registry::{CONTENT_TYPE, SCHEMA_NOT_FOUND, SUBJECT_NOT_FOUND};

/// What the registry holds.
#[derive(Debug, Default)]
struct State {
    /// Schema texts; the id of a schema is its index plus one.
    schemas: Vec<String>,
    /// Each subject's versions, as schema ids.
    subjects: BTreeMap<String, Vec<u32>>,
}

/// A running test registry; stopped when dropped.
#[derive(Debug)]
pub struct TestRegistry {
    address: SocketAddr,
    state: Arc<Mutex<State>>,
    server: Option<JoinHandle<()>>,
}

impl TestRegistry {
    /// Starts a registry on a free port of 127.0.0.1.
    pub async fn start() -> std::io::Result<TestRegistry> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let server = Some(serve(listener, Arc::clone(&state)));
        Ok(TestRegistry { address, state, server })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Stops answering: connections are refused until [`resume`](Self::resume).
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }

    /// Answers again, on the same port, with what it held.
    pub async fn resume(&mut self) -> std::io::Result<()> {
        if self.server.is_none() {
            let listener = TcpListener::bind(self.address).await?;
            self.server = Some(serve(listener, Arc::clone(&self.state)));
        }
        Ok(())
    }

    /// The subjects and how many versions each has.
    pub fn subjects(&self) -> BTreeMap<String, usize> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.subjects.iter().map(|(subject, versions)| (subject.clone(), versions.len())).collect()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(listener: TcpListener, state: Arc<Mutex<State>>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            let state = Arc::clone(&state);
            let service = hyper::service::service_fn(move |request| {
                let state = Arc::clone(&state);
                async move { Ok::<_, std::convert::Infallible>(answer(&state, request).await) }
            });
            connections.spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                // A client that goes away mid-request is no concern of the registry's.
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    })
}

async fn answer(state: &Mutex<State>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return reply(StatusCode::BAD_REQUEST, error(400, "unreadable body")),
    };
    let segments: Vec<String> = path.trim_matches('/').split('/').map(decode_segment).collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
    let (status, value) = match (&method, segments.as_slice()) {
        (&Method::GET, ["subjects"]) => (StatusCode::OK, json!(state.subjects.keys().collect::<Vec<_>>())),
        (&Method::POST, ["subjects", subject, "versions"]) => match schema_of(&body) {
            Ok((text, schema)) => register(&mut state, subject, text, &schema),
            Err(answer) => answer,
        },
        (&Method::GET, ["schemas", "ids", id]) => {
            let text =
                id.parse::<usize>().ok().and_then(|id| id.checked_sub(1)).and_then(|index| state.schemas.get(index));
            match text {
                Some(text) => (StatusCode::OK, json!({ "schema": text })),
                None => (StatusCode::NOT_FOUND, error(SCHEMA_NOT_FOUND, "Schema not found")),
            }
        }
        (&Method::GET, ["subjects", subject, "versions", "latest"]) => match latest(&state, subject) {
            Some((version, id, text)) => {
                (StatusCode::OK, json!({ "subject": subject, "version": version, "id": id, "schema": text }))
            }
            None => (StatusCode::NOT_FOUND, error(SUBJECT_NOT_FOUND, &format!("Subject '{subject}' not found."))),
        },
        (&Method::POST, ["compatibility", "subjects", subject, "versions", "latest"]) => match schema_of(&body) {
            Ok((_, schema)) => match latest(&state, subject) {
                Some((_, _, text)) => match Schema::parse_str(text) {
                    Ok(latest) => (StatusCode::OK, json!({ "is_compatible": backward(&latest, &schema) })),
                    Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, error(50001, "stored schema does not parse")),
                },
                None => (StatusCode::NOT_FOUND, error(SUBJECT_NOT_FOUND, &format!("Subject '{subject}' not found."))),
            },
            Err(answer) => answer,
        },
        _ => (StatusCode::NOT_FOUND, error(404, &format!("no route for {method} {path}"))),
    };
    reply(status, value)
}

/// The `{"schema": "…"}` of a request, parsed; or the answer to give.
fn schema_of(body: &[u8]) -> Result<(String, Schema), (StatusCode, Value)> {
    let invalid = |message: String| (StatusCode::UNPROCESSABLE_ENTITY, error(42201, &message));
    let request: Value = serde_json::from_slice(body).map_err(|error| invalid(format!("Invalid JSON: {error}")))?;
    let text = request.get("schema").and_then(Value::as_str).ok_or_else(|| invalid("No `schema`".to_owned()))?;
    let schema = Schema::parse_str(text).map_err(|error| invalid(format!("Invalid schema: {error}")))?;
    Ok((text.to_owned(), schema))
}

/// Registers `schema` under `subject`: the id of an identical schema (by canonical form)
/// when there is one; a new version unless it is the subject's latest; refused when it
/// cannot read the latest version (`BACKWARD`).
fn register(state: &mut State, subject: &str, text: String, schema: &Schema) -> (StatusCode, Value) {
    let canonical = schema.canonical_form();
    let existing = state
        .schemas
        .iter()
        .position(|stored| Schema::parse_str(stored).is_ok_and(|stored| stored.canonical_form() == canonical));
    if let Some((_, latest_id, latest_text)) = latest(state, subject) {
        if existing.is_some_and(|index| u32::try_from(index + 1) == Ok(latest_id)) {
            return (StatusCode::OK, json!({ "id": latest_id }));
        }
        if let Ok(latest) = Schema::parse_str(latest_text) {
            if !backward(&latest, schema) {
                return (
                    StatusCode::CONFLICT,
                    error(409, "Schema being registered is incompatible with an earlier schema for subject"),
                );
            }
        }
    }
    let index = match existing {
        Some(index) => index,
        None => {
            state.schemas.push(text);
            state.schemas.len() - 1
        }
    };
    let Ok(id) = u32::try_from(index + 1) else {
        return (StatusCode::INTERNAL_SERVER_ERROR, error(50001, "too many schemas"));
    };
    state.subjects.entry(subject.to_owned()).or_default().push(id);
    (StatusCode::OK, json!({ "id": id }))
}

/// The latest version of a subject: its number (from 1), id and text.
fn latest<'s>(state: &'s State, subject: &str) -> Option<(usize, u32, &'s str)> {
    let versions = state.subjects.get(subject)?;
    let id = *versions.last()?;
    let text = state.schemas.get(usize::try_from(id).ok()?.checked_sub(1)?)?;
    Some((versions.len(), id, text))
}

/// `BACKWARD`: data written with the latest version can be read with the new schema.
fn backward(latest: &Schema, new: &Schema) -> bool {
    SchemaCompatibility::can_read(latest, new).is_ok()
}

fn error(code: i64, message: &str) -> Value {
    json!({ "error_code": code, "message": message })
}

fn reply(status: StatusCode, value: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(CONTENT_TYPE));
    response
}

fn decode_segment(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex = bytes.get(index + 1..index + 3).and_then(|hex| std::str::from_utf8(hex).ok());
        match (bytes[index], hex.and_then(|hex| u8::from_str_radix(hex, 16).ok())) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                index += 3;
            }
            (byte, _) => {
                decoded.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}
