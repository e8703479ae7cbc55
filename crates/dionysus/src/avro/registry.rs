//! A client of the Confluent schema registry REST API, the subset dionysus uses: register a
//! schema under a subject, fetch a schema by id, the latest version of a subject, and the
//! compatibility of a schema with that latest version. Ids and schemas are cached for the
//! client's life (an id never changes its schema). Plain HTTP/1.1 (`http://` URLs).
//!
//! This module speaks the protocol; which subject a topic's schemas go to is
//! [`value_subject`](super::value_subject) / [`key_subject`](super::key_subject), and what is
//! done when the registry is unreachable is the caller's (the relay retries the row, the
//! consumer retries the partition).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use apache_avro::Schema;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use serde_json::{json, Value};

/// The registry's content type.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";
/// The registry's error code for an unknown subject.
pub const SUBJECT_NOT_FOUND: i64 = 40401;
/// The registry's error code for an unknown schema id.
pub const SCHEMA_NOT_FOUND: i64 = 40403;

/// A registry request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The URL is not `http://host:port[/path]`.
    #[error("schema registry URL `{url}` is not of the form http://host:port")]
    InvalidUrl {
        /// The URL as given.
        url: String,
    },
    /// No answer: connection refused, reset, or the timeout passed.
    #[error("schema registry at {url} is unreachable ({operation}): {reason}")]
    Unreachable {
        /// The registry's URL.
        url: String,
        /// What was asked, e.g. `GET /schemas/ids/3`.
        operation: String,
        /// What failed.
        reason: String,
    },
    /// The registry answered with an error.
    #[error("schema registry answered {status} to {operation}: {message} (error code {error_code})")]
    Rejected {
        /// What was asked.
        operation: String,
        /// The HTTP status.
        status: u16,
        /// The registry's `error_code`.
        error_code: i64,
        /// The registry's `message`.
        message: String,
    },
    /// The answer is not what the API documents.
    #[error("schema registry's answer to {operation} is not understood: {reason}")]
    Malformed {
        /// What was asked.
        operation: String,
        /// What was wrong with it.
        reason: String,
    },
    /// A schema the registry returned does not parse.
    #[error("schema {id} from the registry does not parse: {reason}")]
    InvalidSchema {
        /// The schema id.
        id: u32,
        /// What the parser reported.
        reason: String,
    },
}

impl RegistryError {
    /// Whether the registry could not be reached (as opposed to answering no): worth
    /// retrying later.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, RegistryError::Unreachable { .. })
            || matches!(self, RegistryError::Rejected { status, .. } if *status >= 500)
    }
}

/// The latest version of a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectVersion {
    /// The subject.
    pub subject: String,
    /// Its version number.
    pub version: i64,
    /// The schema's id.
    pub id: u32,
    /// The schema's text.
    pub schema: String,
}

/// Whether a schema may be registered under a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compatibility {
    /// The subject has no version yet: any schema is.
    NewSubject,
    /// Compatible with the latest version under the subject's compatibility level.
    Compatible,
    /// Not compatible.
    Incompatible,
}

/// A schema registry client with its caches.
#[derive(Debug)]
pub struct RegistryClient {
    url: String,
    authority: String,
    prefix: String,
    timeout: Duration,
    ids: Mutex<HashMap<(String, String), u32>>,
    schemas: Mutex<HashMap<u32, Arc<Schema>>>,
}

impl RegistryClient {
    /// A client of the registry at `url` (`http://host:port`, optionally with a path
    /// prefix); each request waits at most 10 seconds.
    pub fn new(url: &str) -> Result<RegistryClient, RegistryError> {
        let invalid = || RegistryError::InvalidUrl { url: url.to_owned() };
        let rest = url.strip_prefix("http://").ok_or_else(invalid)?;
        let (authority, prefix) = match rest.split_once('/') {
            Some((authority, prefix)) => (authority, format!("/{}", prefix.trim_end_matches('/'))),
            None => (rest, String::new()),
        };
        if authority.is_empty() || !authority.contains(':') {
            return Err(invalid());
        }
        let prefix = if prefix == "/" { String::new() } else { prefix };
        Ok(RegistryClient {
            url: url.trim_end_matches('/').to_owned(),
            authority: authority.to_owned(),
            prefix,
            timeout: Duration::from_secs(10),
            ids: Mutex::default(),
            schemas: Mutex::default(),
        })
    }

    /// The same client with another per-request timeout.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> RegistryClient {
        self.timeout = timeout;
        self
    }

    /// The registry's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Registers `definition` under `subject` (a no-op for the registry when it is there
    /// already) and returns its id; cached per subject and text.
    pub async fn register(&self, subject: &str, definition: &str) -> Result<u32, RegistryError> {
        let cache_key = (subject.to_owned(), definition.to_owned());
        if let Some(id) = self.ids.lock().unwrap_or_else(PoisonError::into_inner).get(&cache_key) {
            return Ok(*id);
        }
        let path = format!("/subjects/{}/versions", encode_segment(subject));
        let answer = self.request(Method::POST, &path, Some(json!({ "schema": definition }))).await?;
        let id = id_of(&answer).ok_or_else(|| malformed("POST", &path, "no `id`"))?;
        self.ids.lock().unwrap_or_else(PoisonError::into_inner).insert(cache_key, id);
        Ok(id)
    }

    /// The schema of this id; cached.
    pub async fn schema_by_id(&self, id: u32) -> Result<Arc<Schema>, RegistryError> {
        if let Some(schema) = self.schemas.lock().unwrap_or_else(PoisonError::into_inner).get(&id) {
            return Ok(Arc::clone(schema));
        }
        let path = format!("/schemas/ids/{id}");
        let answer = self.request(Method::GET, &path, None).await?;
        let text =
            answer.get("schema").and_then(Value::as_str).ok_or_else(|| malformed("GET", &path, "no `schema`"))?;
        let schema = Arc::new(
            Schema::parse_str(text).map_err(|error| RegistryError::InvalidSchema { id, reason: error.to_string() })?,
        );
        self.schemas.lock().unwrap_or_else(PoisonError::into_inner).insert(id, Arc::clone(&schema));
        Ok(schema)
    }

    /// The latest version of `subject`, `None` when the subject has none.
    pub async fn latest(&self, subject: &str) -> Result<Option<SubjectVersion>, RegistryError> {
        let path = format!("/subjects/{}/versions/latest", encode_segment(subject));
        let answer = match self.request(Method::GET, &path, None).await {
            Ok(answer) => answer,
            Err(RegistryError::Rejected { error_code: SUBJECT_NOT_FOUND, .. }) => return Ok(None),
            Err(error) => return Err(error),
        };
        let malformed = |what: &str| malformed("GET", &path, what);
        Ok(Some(SubjectVersion {
            subject: answer.get("subject").and_then(Value::as_str).ok_or_else(|| malformed("no `subject`"))?.to_owned(),
            version: answer.get("version").and_then(Value::as_i64).ok_or_else(|| malformed("no `version`"))?,
            id: id_of(&answer).ok_or_else(|| malformed("no `id`"))?,
            schema: answer.get("schema").and_then(Value::as_str).ok_or_else(|| malformed("no `schema`"))?.to_owned(),
        }))
    }

    /// Whether `definition` is compatible with the latest version of `subject` under the
    /// subject's compatibility level.
    pub async fn compatibility(&self, subject: &str, definition: &str) -> Result<Compatibility, RegistryError> {
        let path = format!("/compatibility/subjects/{}/versions/latest", encode_segment(subject));
        let answer = match self.request(Method::POST, &path, Some(json!({ "schema": definition }))).await {
            Ok(answer) => answer,
            Err(RegistryError::Rejected { error_code: SUBJECT_NOT_FOUND, .. }) => return Ok(Compatibility::NewSubject),
            Err(error) => return Err(error),
        };
        match answer.get("is_compatible").and_then(Value::as_bool) {
            Some(true) => Ok(Compatibility::Compatible),
            Some(false) => Ok(Compatibility::Incompatible),
            None => Err(malformed("POST", &path, "no `is_compatible`")),
        }
    }

    async fn request(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, RegistryError> {
        let operation = format!("{method} {path}");
        let unreachable =
            |reason: String| RegistryError::Unreachable { url: self.url.clone(), operation: operation.clone(), reason };
        let exchange = async {
            let stream = tokio::net::TcpStream::connect(&self.authority).await.map_err(|error| error.to_string())?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|error| error.to_string())?;
            let driver = tokio::spawn(connection);
            let request = Request::builder()
                .method(method.clone())
                .uri(format!("{}{path}", self.prefix))
                .header(hyper::header::HOST, &self.authority)
                .header(hyper::header::ACCEPT, CONTENT_TYPE)
                .header(hyper::header::CONTENT_TYPE, CONTENT_TYPE)
                .body(Full::new(Bytes::from(body.map(|body| body.to_string()).unwrap_or_default())))
                .map_err(|error| error.to_string())?;
            let response = sender.send_request(request).await.map_err(|error| error.to_string())?;
            let status = response.status();
            let bytes = response.into_body().collect().await.map_err(|error| error.to_string())?.to_bytes();
            driver.abort();
            Ok::<_, String>((status, bytes))
        };
        let (status, bytes) = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(reason)) => return Err(unreachable(reason)),
            Err(_) => return Err(unreachable(format!("no answer within {:?}", self.timeout))),
        };
        let value: Value = serde_json::from_slice(&bytes).map_err(|error| RegistryError::Malformed {
            operation: operation.clone(),
            reason: format!("{status}, not JSON: {error}"),
        })?;
        if status == StatusCode::OK {
            return Ok(value);
        }
        Err(RegistryError::Rejected {
            operation,
            status: status.as_u16(),
            error_code: value.get("error_code").and_then(Value::as_i64).unwrap_or_default(),
            message: value.get("message").and_then(Value::as_str).unwrap_or_default().to_owned(),
        })
    }
}

fn id_of(answer: &Value) -> Option<u32> {
    answer.get("id").and_then(Value::as_u64).and_then(|id| u32::try_from(id).ok())
}

fn malformed(method: &str, path: &str, reason: &str) -> RegistryError {
    RegistryError::Malformed { operation: format!("{method} {path}"), reason: reason.to_owned() }
}

/// A subject as one URL path segment (subjects are topic names plus `-value`/`-key`, but may
/// hold anything).
fn encode_segment(segment: &str) -> String {
    let mut encoded = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_http_with_host_and_port() {
        let client = RegistryClient::new("http://127.0.0.1:8081/registry/").unwrap();
        assert_eq!(client.authority, "127.0.0.1:8081");
        assert_eq!(client.prefix, "/registry");
        assert!(RegistryClient::new("https://registry:8081").is_err());
        assert!(RegistryClient::new("http://registry").is_err());
    }

    #[test]
    fn subjects_are_one_path_segment() {
        assert_eq!(encode_segment("v3_rentals-value"), "v3_rentals-value");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
    }
}
