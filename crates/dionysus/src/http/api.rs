//! The JSON routes (`/ping`, `/health`, `/v1/…`) and what the console shares with them:
//! parameters, errors and the calls into the stores.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::checkpoint::{CheckpointError, EventFilter, RetryOutcome};
use crate::consumer::dead_letters::{self, DeadLetterError, DeadLetterFilter, StoredDeadLetter};
use crate::consumer::DeadLetterHeaders;
use crate::producer::relay::inspect;
use crate::telemetry::Report;

use super::state::{Api, MAX_LIMIT};

/// An error answer: its status and a message, as JSON
/// `{"error": {"status": 404, "message": "…"}}`.
#[derive(Debug)]
pub(super) struct ApiError {
    pub(super) status: StatusCode,
    pub(super) message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }

    /// 400 naming the parameter.
    pub(super) fn parameter(name: &str, problem: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, format!("parameter `{name}`: {problem}"))
    }

    pub(super) fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// 503 for a store that failed (our own fault: the database or the broker), logged.
    pub(super) fn unavailable(error: &(dyn std::error::Error + 'static)) -> ApiError {
        let message = Report(error).to_string();
        tracing::warn!("events API: {message}");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "status": self.status.as_u16(), "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

impl From<CheckpointError> for ApiError {
    fn from(error: CheckpointError) -> ApiError {
        match error {
            CheckpointError::InvalidFilter { .. } => ApiError::new(StatusCode::BAD_REQUEST, Report(&error).to_string()),
            // Not our fault to retry: the binary serving the API lacks the handler.
            CheckpointError::NoHandler { .. } => ApiError::new(StatusCode::CONFLICT, Report(&error).to_string()),
            other => ApiError::unavailable(&other),
        }
    }
}

impl From<diesel::result::Error> for ApiError {
    fn from(error: diesel::result::Error) -> ApiError {
        ApiError::unavailable(&error)
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(error: crate::db::DbError) -> ApiError {
        ApiError::unavailable(&error)
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, format!("query string: {}", rejection.body_text()))
    }
}

pub(super) type Answer = Result<Response, ApiError>;

/// The query parameters of a request, checked against the names a route knows.
#[derive(Debug, Default)]
pub(super) struct Params(Vec<(String, String)>);

impl Params {
    pub(super) fn new(
        query: Result<Query<Vec<(String, String)>>, QueryRejection>,
        known: &[&str],
    ) -> Result<Params, ApiError> {
        let Query(pairs) = query?;
        if let Some((name, _)) = pairs.iter().find(|(name, _)| !known.contains(&name.as_str())) {
            return Err(ApiError::parameter(name, format!("unknown; expected one of {}", known.join(", "))));
        }
        Ok(Params(pairs))
    }

    /// The value of `name`, when given and not empty (a filter left blank in a form).
    pub(super) fn text(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    /// An integer `name` within `min..=max`, `default` when absent.
    pub(super) fn integer(&self, name: &str, default: i64, min: i64, max: i64) -> Result<i64, ApiError> {
        let Some(text) = self.text(name) else { return Ok(default) };
        match text.parse::<i64>() {
            Ok(value) if (min..=max).contains(&value) => Ok(value),
            Ok(_) if max == i64::MAX => Err(ApiError::parameter(name, format!("must be at least {min}, got {text}"))),
            Ok(_) => Err(ApiError::parameter(name, format!("must be between {min} and {max}, got {text}"))),
            Err(_) => Err(ApiError::parameter(name, format!("must be an integer, got `{text}`"))),
        }
    }

    pub(super) fn optional_integer(&self, name: &str) -> Result<Option<i64>, ApiError> {
        match self.text(name) {
            None => Ok(None),
            Some(text) => text
                .parse()
                .map(Some)
                .map_err(|_| ApiError::parameter(name, format!("must be an integer, got `{text}`"))),
        }
    }

    /// `limit` (1 ..= [`MAX_LIMIT`], default 20) and `offset` (≥ 0, default 0).
    pub(super) fn page(&self) -> Result<(u32, u64), ApiError> {
        let limit = self.integer("limit", 20, 1, i64::from(MAX_LIMIT))?;
        let offset = self.integer("offset", 0, 0, i64::MAX)?;
        Ok((u32::try_from(limit).unwrap_or(MAX_LIMIT), u64::try_from(offset).unwrap_or(0)))
    }

    /// The filter of the event and failure lists.
    pub(super) fn event_filter(&self) -> Result<EventFilter, ApiError> {
        let (limit, offset) = self.page()?;
        let mut filter = EventFilter::new().limit(limit).offset(offset);
        if let Some(entity_id) = self.text("entity_id") {
            filter = filter.entity_id(entity_id);
        }
        if let Some(topic) = self.text("topic") {
            filter = filter.topic(topic);
        }
        if let Some(group_id) = self.text("group_id") {
            filter = filter.group_id(group_id);
        }
        if let Some(event_type) = self.text("event_type") {
            filter = filter.event_type(event_type);
        }
        Ok(filter)
    }
}

/// The parameters of the event and failure lists.
pub(super) const EVENT_PARAMS: &[&str] = &["limit", "offset", "entity_id", "topic", "group_id", "event_type"];

/// A path id: a positive integer.
pub(super) fn id(text: &str) -> Result<i64, ApiError> {
    text.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::parameter("id", format!("must be a positive integer, got `{text}`")))
}

pub(super) async fn ping() -> &'static str {
    "PONG"
}

pub(super) async fn health(State(api): State<Api>) -> Response {
    let answer = async {
        let mut conn = crate::db::checkout(api.pool()).await.map_err(|error| Report(&error).to_string())?;
        diesel_async::RunQueryDsl::execute(diesel::sql_query("SELECT 1"), &mut conn)
            .await
            .map_err(|error| Report(&error).to_string())
    };
    match answer.await {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("database unavailable: {reason}\n")).into_response(),
    }
}

fn json(value: impl serde::Serialize) -> Answer {
    Ok(Json(value).into_response())
}

pub(super) async fn events(
    State(api): State<Api>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Answer {
    let filter = Params::new(query, EVENT_PARAMS)?.event_filter()?;
    json(api.checkpoints().events(&filter).await?.items)
}

pub(super) async fn event(State(api): State<Api>, Path(id): Path<String>) -> Answer {
    let id = self::id(&id)?;
    match api.checkpoints().event(id).await? {
        Some(event) => json(event),
        None => Err(ApiError::not_found(format!("no event with id {id}"))),
    }
}

/// A retry's outcome as JSON, and its status: 200 when the handler succeeded, 422 when it
/// failed again.
pub(super) fn outcome(outcome: &RetryOutcome) -> (StatusCode, Value) {
    match outcome {
        RetryOutcome::Succeeded { event_id } => {
            (StatusCode::OK, json!({ "retried": true, "acknowledged": event_id.is_some(), "event_id": event_id }))
        }
        RetryOutcome::Failed { error } => {
            (StatusCode::UNPROCESSABLE_ENTITY, json!({ "retried": false, "error": error }))
        }
        RetryOutcome::NotFound => (StatusCode::NOT_FOUND, json!({ "retried": false, "error": "no such row" })),
    }
}

pub(super) async fn retry_event(State(api): State<Api>, Path(id): Path<String>) -> Answer {
    let id = self::id(&id)?;
    match api.checkpoints().retry_event(id).await? {
        RetryOutcome::NotFound => Err(ApiError::not_found(format!("no event with id {id}"))),
        retried => {
            let (status, body) = outcome(&retried);
            Ok((status, Json(body)).into_response())
        }
    }
}

pub(super) async fn failures(
    State(api): State<Api>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Answer {
    let filter = Params::new(query, EVENT_PARAMS)?.event_filter()?;
    json(api.checkpoints().failures(&filter).await?.items)
}

pub(super) async fn failure(State(api): State<Api>, Path(id): Path<String>) -> Answer {
    let id = self::id(&id)?;
    match api.checkpoints().failure(id).await? {
        Some(failure) => json(failure),
        None => Err(ApiError::not_found(format!("no failure with id {id}"))),
    }
}

pub(super) async fn retry_failure(State(api): State<Api>, Path(id): Path<String>) -> Answer {
    let id = self::id(&id)?;
    match api.checkpoints().retry_failure(id).await? {
        RetryOutcome::NotFound => Err(ApiError::not_found(format!("no failure with id {id}"))),
        retried => {
            let (status, body) = outcome(&retried);
            Ok((status, Json(body)).into_response())
        }
    }
}

pub(super) async fn delete_failure(State(api): State<Api>, Path(id): Path<String>) -> Answer {
    let id = self::id(&id)?;
    if api.checkpoints().delete_failure(id).await? {
        json(json!({ "deleted": true, "id": id }))
    } else {
        Err(ApiError::not_found(format!("no failure with id {id}")))
    }
}

pub(super) async fn outbox_stats(
    State(api): State<Api>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Answer {
    Params::new(query, &[])?;
    let mut conn = crate::db::checkout(api.pool()).await?;
    json(inspect::stats(&mut conn).await?)
}

pub(super) async fn outbox_parked(
    State(api): State<Api>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Answer {
    let (limit, offset) = Params::new(query, &["limit", "offset"])?.page()?;
    let mut conn = crate::db::checkout(api.pool()).await?;
    let offset = i64::try_from(offset).unwrap_or(i64::MAX);
    json(inspect::parked(&mut conn, i64::from(limit), offset).await?)
}

pub(super) async fn retry_parked(State(api): State<Api>, Path(id): Path<String>) -> Answer {
    let id = self::id(&id)?;
    let mut conn = crate::db::checkout(api.pool()).await?;
    match inspect::retry_parked(&mut conn, Some(id), None).await? {
        0 => Err(ApiError::not_found(format!("no parked outbox row with id {id}"))),
        _ => json(json!({ "retried": true, "id": id })),
    }
}

/// The parameters of the dead-letter list.
pub(super) const DEAD_LETTER_PARAMS: &[&str] = &["limit", "reason", "topic", "from_offset", "to_offset"];

pub(super) fn dead_letter_filter(params: &Params) -> Result<DeadLetterFilter, ApiError> {
    Ok(DeadLetterFilter {
        reason: params.text("reason"),
        topic: params.text("topic"),
        from_offset: params.optional_integer("from_offset")?,
        to_offset: params.optional_integer("to_offset")?,
    })
}

/// A dead letter as JSON: where it is, where it came from, why, and its key and payload as
/// text (lossy UTF-8).
pub(super) fn dead_letter_json(letter: &StoredDeadLetter) -> Value {
    let text = |bytes: &Option<Vec<u8>>| bytes.as_deref().map(|bytes| String::from_utf8_lossy(bytes).into_owned());
    json!({
        "partition": letter.partition,
        "offset": letter.offset,
        "reason": letter.header(DeadLetterHeaders::REASON),
        "error": letter.header(DeadLetterHeaders::ERROR),
        "source_topic": letter.header(DeadLetterHeaders::TOPIC),
        "source_partition": letter.header(DeadLetterHeaders::PARTITION).and_then(|p| p.parse::<i32>().ok()),
        "source_offset": letter.source_offset(),
        "group_id": letter.header(DeadLetterHeaders::GROUP),
        "key": text(&letter.key),
        "payload": text(&letter.payload),
    })
}

/// Dead letters of the configured topic; none when the topic does not exist yet.
pub(super) async fn read_dead_letters(
    api: &Api,
    filter: DeadLetterFilter,
    limit: usize,
) -> Result<Vec<StoredDeadLetter>, ApiError> {
    let topic = api.config().consumer.dead_letter_topic.clone();
    match dead_letters::list(api.config(), topic, filter, limit).await {
        Ok(read) => Ok(read.matching),
        Err(DeadLetterError::NoTopic { .. }) => Ok(Vec::new()),
        Err(error) => Err(ApiError::unavailable(&error)),
    }
}

pub(super) async fn dead_letters(
    State(api): State<Api>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Answer {
    let params = Params::new(query, DEAD_LETTER_PARAMS)?;
    let limit = params.integer("limit", 100, 1, i64::from(MAX_LIMIT))?;
    let filter = dead_letter_filter(&params)?;
    let letters = read_dead_letters(&api, filter, usize::try_from(limit).unwrap_or(100)).await?;
    json(letters.iter().map(dead_letter_json).collect::<Vec<_>>())
}

/// The body of `POST /v1/dead-letters/replay`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplayRequest {
    reason: Option<String>,
    topic: Option<String>,
    from_offset: Option<i64>,
    to_offset: Option<i64>,
    limit: Option<u32>,
    group: Option<String>,
}

/// Replays dead letters of the configured topic; the position is kept by `group` (default
/// `<dead-letter topic>-replay`, as `dionysus dlq replay`).
pub(super) async fn replay(
    api: &Api,
    filter: DeadLetterFilter,
    limit: u32,
    group: Option<String>,
) -> Result<dead_letters::Replayed, ApiError> {
    let topic = api.config().consumer.dead_letter_topic.clone();
    let group = group.unwrap_or_else(|| format!("{topic}-replay"));
    match dead_letters::replay(api.config(), topic, group, filter, limit as usize).await {
        Ok(replayed) => Ok(replayed),
        Err(error @ DeadLetterError::NoTopic { .. }) => Err(ApiError::not_found(Report(&error).to_string())),
        Err(error) => Err(ApiError::unavailable(&error)),
    }
}

pub(super) async fn replay_dead_letters(State(api): State<Api>, body: axum::body::Bytes) -> Answer {
    let request: ReplayRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ReplayRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|error| ApiError::new(StatusCode::BAD_REQUEST, format!("body: not a replay request: {error}")))?
    };
    let limit = request.limit.unwrap_or(MAX_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::parameter("limit", format!("must be between 1 and {MAX_LIMIT}, got {limit}")));
    }
    let filter = DeadLetterFilter {
        reason: request.reason,
        topic: request.topic,
        from_offset: request.from_offset,
        to_offset: request.to_offset,
    };
    let replayed = replay(&api, filter, limit, request.group).await?;
    json(json!({
        "replayed": replayed.sent,
        "read": replayed.read,
        "left_out": replayed.left_out,
        "skipped": replayed.skipped.iter().map(|(p, o)| format!("{p}@{o}")).collect::<Vec<_>>(),
    }))
}
