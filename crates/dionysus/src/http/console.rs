//! The operations console: server-rendered HTML pages, forms for every mutation (`POST` with
//! the session's form token), no script. Every value written into a page goes through
//! [`escape`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use diesel::sql_types::{BigInt, Integer, Text, Timestamptz};
use diesel_async::RunQueryDsl;
use serde_json::Value;

use crate::producer::relay::inspect;

use super::api::{self, ApiError, Params, DEAD_LETTER_PARAMS, EVENT_PARAMS};
use super::page::{encode, error_page, escape, login_page, page, Session, LOGIN_COOKIE};
use super::state::{Api, MAX_LIMIT};

pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console") }))
        .route("/console", get(overview))
        .route("/console/", get(|| async { Redirect::to("/console") }))
        .route("/console/events", get(events))
        .route("/console/failures", get(failures))
        .route("/console/dead-letters", get(dead_letters))
        .route("/console/login", get(login).post(sign_in))
        .route("/console/events/{id}/retry", post(retry_event))
        .route("/console/failures/{id}/retry", post(retry_failure))
        .route("/console/failures/{id}/delete", post(delete_failure))
        .route("/console/outbox/parked/{id}/retry", post(retry_parked))
        .route("/console/dead-letters/replay", post(replay))
}

/// An API error as a page.
fn problem(error: ApiError) -> Response {
    error_page(error.status, &error.message)
}

/// A form posting to `action` with the session's token and one button.
fn button(api: &Api, session: &Session, action: &str, label: &str, fields: &[(&str, String)]) -> String {
    let mut html = format!(
        "<form class=\"inline\" method=\"post\" action=\"{}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        escape(action),
        api.form_token(&session.id)
    );
    for (name, value) in fields {
        let _ = write!(html, "<input type=\"hidden\" name=\"{}\" value=\"{}\">", escape(name), escape(value));
    }
    let _ = write!(html, "<button type=\"submit\">{}</button></form>", escape(label));
    html
}

/// The notice passed along a redirect (`?notice=`).
fn notice(params: &Params) -> Option<String> {
    params.text("notice")
}

/// A JSON value as table text: strings as they are, null as a dash.
fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "–".to_owned(),
        Some(Value::String(text)) => escape(text),
        Some(other) => escape(&other.to_string()),
    }
}

/// The filter form of the event and failure pages.
fn filter_form(action: &str, params: &Params) -> String {
    let mut html = format!("<form method=\"get\" action=\"{action}\" class=\"filters\">");
    for name in ["entity_id", "topic", "group_id", "event_type"] {
        let _ = write!(
            html,
            "<label>{name} <input name=\"{name}\" value=\"{}\" size=\"14\"></label> ",
            escape(&params.text(name).unwrap_or_default())
        );
    }
    let _ = write!(
        html,
        "<label>limit <input name=\"limit\" value=\"{}\" size=\"4\"></label> <button type=\"submit\">Filter</button></form>",
        escape(&params.text("limit").unwrap_or_else(|| "20".to_owned()))
    );
    html
}

/// Links to the previous and next page of a list.
fn pager(base: &str, params: &Params, limit: u32, offset: u64, shown: usize) -> String {
    let query = |offset: u64| {
        let mut query = format!("?limit={limit}&offset={offset}");
        for name in ["entity_id", "topic", "group_id", "event_type"] {
            if let Some(value) = params.text(name) {
                let _ = write!(query, "&{name}={}", encode(&value));
            }
        }
        query
    };
    let mut html = String::from("<p>");
    if offset > 0 {
        let _ =
            write!(html, "<a href=\"{base}{}\">← newer</a> ", escape(&query(offset.saturating_sub(u64::from(limit)))));
    }
    if shown == limit as usize {
        let _ = write!(html, "<a href=\"{base}{}\">older →</a>", escape(&query(offset + u64::from(limit))));
    }
    html.push_str("</p>");
    html
}

type QueryPairs = Result<Query<Vec<(String, String)>>, QueryRejection>;

fn with_notice<'a>(known: &[&'a str]) -> Vec<&'a str> {
    let mut names = known.to_vec();
    names.push("notice");
    names.push("offset");
    names
}

#[derive(diesel::QueryableByName)]
struct StoredOffset {
    #[diesel(sql_type = Text)]
    group_id: String,
    #[diesel(sql_type = Text)]
    topic: String,
    #[diesel(sql_type = Integer)]
    partition: i32,
    #[diesel(sql_type = BigInt)]
    next_offset: i64,
    #[diesel(sql_type = Timestamptz)]
    updated_at: chrono::DateTime<chrono::Utc>,
}

/// The broker's high watermark of each (topic, partition), or why it could not be read.
async fn high_watermarks(api: &Api, wanted: Vec<(String, i32)>) -> Result<BTreeMap<(String, i32), i64>, String> {
    if wanted.is_empty() {
        return Ok(BTreeMap::new());
    }
    let kafka = api.config().kafka.clone();
    let read = tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer as _};
        let consumer: BaseConsumer<crate::kafka::Logs> = crate::kafka::consumer_config(&kafka, "dionysus-console")
            .create_with_context(crate::kafka::Logs::default())
            .map_err(|error| format!("creating a Kafka client: {error}"))?;
        let mut found = BTreeMap::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        for (topic, partition) in wanted {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match consumer.fetch_watermarks(&topic, partition, left.min(Duration::from_secs(3))) {
                Ok((_, high)) => {
                    found.insert((topic, partition), high);
                }
                Err(error) => return Err(format!("reading the offsets of {topic}/{partition}: {error}")),
            }
        }
        Ok(found)
    });
    read.await.map_err(|error| format!("reading the broker's offsets: {error}"))?
}

fn age(seconds: f64) -> String {
    let seconds = seconds.max(0.0);
    if seconds < 120.0 {
        format!("{seconds:.1} s")
    } else if seconds < 7200.0 {
        format!("{:.1} min", seconds / 60.0)
    } else {
        format!("{:.1} h", seconds / 3600.0)
    }
}

async fn overview(State(api): State<Api>, headers: HeaderMap, query: QueryPairs) -> Response {
    let session = Session::of(&headers);
    let params = match Params::new(query, &["notice"]) {
        Ok(params) => params,
        Err(error) => return problem(error),
    };
    let mut body = String::new();
    match overview_body(&api, &session, &mut body).await {
        Ok(()) => page(&session, "Overview", "Overview", notice(&params).as_deref(), &body),
        Err(error) => problem(error),
    }
}

async fn overview_body(api: &Api, session: &Session, body: &mut String) -> Result<(), ApiError> {
    let mut conn = crate::db::checkout(api.pool()).await?;
    let stats = inspect::stats(&mut conn).await?;
    let _ = write!(
        body,
        "<h2>Outbox</h2><div class=\"stats\"><div class=\"stat\" id=\"backlog\"><b>{}</b>rows waiting</div>\
         <div class=\"stat\" id=\"oldest\"><b>{}</b>oldest waiting</div>\
         <div class=\"stat\"><b>{}</b>waiting for a retry</div>\
         <div class=\"stat\" id=\"parked-total\"><b>{}</b>parked</div></div>",
        stats.backlog,
        age(stats.oldest_unpublished_seconds),
        stats.retrying,
        stats.parked.total
    );
    let parked = inspect::parked(&mut conn, 100, 0).await?;
    body.push_str("<h2>Parked rows</h2>");
    if parked.is_empty() {
        body.push_str("<p>None: every row is published or on its way.</p>");
    } else {
        body.push_str(
            "<table id=\"parked\"><tr><th>id</th><th>topic</th><th>record</th><th>event</th><th>error</th>\
             <th>attempts</th><th>parked at</th><th></th></tr>",
        );
        for row in &parked {
            let _ = write!(
                body,
                "<tr><td class=\"num\">{}</td><td>{}</td><td>{} {}</td><td>{}</td><td><b>{}</b> {}</td>\
                 <td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
                row.id,
                escape(&row.topic),
                escape(&row.resource_class),
                escape(&row.resource_id),
                escape(&row.event_name),
                escape(row.error_class.as_deref().unwrap_or("-")),
                escape(row.error_message.as_deref().unwrap_or("")),
                row.attempts,
                row.failed_at.format("%Y-%m-%d %H:%M:%S UTC"),
                button(api, session, &format!("/console/outbox/parked/{}/retry", row.id), "Retry", &[]),
            );
        }
        body.push_str("</table>");
        if parked.len() == 100 {
            body.push_str(
                "<p>The first 100 of them; <code>GET /v1/outbox/parked?offset=100</code> lists the rest.</p>",
            );
        }
    }
    let offsets: Vec<StoredOffset> = diesel::sql_query(
        "SELECT group_id, topic, partition, next_offset, updated_at FROM dionysus_consumer_offsets \
         ORDER BY group_id, topic, partition LIMIT 1000",
    )
    .load(&mut conn)
    .await?;
    drop(conn);
    body.push_str("<h2>Consumer groups</h2>");
    if offsets.is_empty() {
        body.push_str("<p>No consumer has stored an offset in this database.</p>");
        return Ok(());
    }
    let wanted = offsets.iter().map(|row| (row.topic.clone(), row.partition)).collect();
    let watermarks = high_watermarks(api, wanted).await;
    if let Err(reason) = &watermarks {
        let _ = write!(body, "<p class=\"problem\">Lag unknown: {}</p>", escape(reason));
    }
    body.push_str(
        "<table id=\"groups\"><tr><th>group</th><th>topic</th><th>partition</th><th>stored offset</th>\
         <th>high watermark</th><th>lag</th><th>stored at</th></tr>",
    );
    for row in &offsets {
        let high = watermarks.as_ref().ok().and_then(|found| found.get(&(row.topic.clone(), row.partition)).copied());
        let (high, lag) = match high {
            Some(high) => (high.to_string(), (high - row.next_offset).max(0).to_string()),
            None => ("–".to_owned(), "–".to_owned()),
        };
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{high}</td>\
             <td class=\"num lag\">{lag}</td><td>{}</td></tr>",
            escape(&row.group_id),
            escape(&row.topic),
            row.partition,
            row.next_offset,
            row.updated_at.format("%Y-%m-%d %H:%M:%S UTC"),
        );
    }
    body.push_str("</table>");
    Ok(())
}

async fn events(State(api): State<Api>, headers: HeaderMap, query: QueryPairs) -> Response {
    let session = Session::of(&headers);
    let params = match Params::new(query, &with_notice(EVENT_PARAMS)) {
        Ok(params) => params,
        Err(error) => return problem(error),
    };
    let filter = match params.event_filter() {
        Ok(filter) => filter,
        Err(error) => return problem(error),
    };
    let page_of = match api.checkpoints().events(&filter).await {
        Ok(page) => page,
        Err(error) => return problem(error.into()),
    };
    let mut body = filter_form("/console/events", &params);
    if page_of.items.is_empty() {
        body.push_str("<p id=\"empty\">No checkpointed event matches.</p>");
    } else {
        body.push_str(
            "<table id=\"events\"><tr><th>id</th><th>topic</th><th>group</th><th>entity</th><th>event</th>\
             <th>event time</th><th>partition@offset</th><th>checksum</th><th>payload</th><th></th></tr>",
        );
        for event in &page_of.items {
            let event = serde_json::to_value(event).unwrap_or_default();
            let id = event.get("id").and_then(Value::as_i64).unwrap_or_default();
            let _ = write!(
                body,
                "<tr id=\"event-{id}\"><td class=\"num\">{id}</td><td>{}</td><td>{}</td><td class=\"entity\">{}</td>\
                 <td>{} {}</td><td>{}</td><td>{}@{}</td><td class=\"mono\">{}</td><td class=\"mono\">{}</td><td>{}</td></tr>",
                cell(event.get("topic")),
                cell(event.get("group_id")),
                cell(event.get("entity_id")),
                cell(event.get("event_type")),
                cell(event.get("event_version")),
                cell(event.get("event_time")),
                cell(event.get("partition")),
                cell(event.get("offset")),
                cell(event.get("checksum")),
                cell(event.get("payload")),
                button(&api, &session, &format!("/console/events/{id}/retry"), "Retry", &[]),
            );
        }
        body.push_str("</table>");
    }
    body.push_str(&pager("/console/events", &params, filter.limit, filter.offset, page_of.items.len()));
    page(&session, "Events", "Events", notice(&params).as_deref(), &body)
}

async fn failures(State(api): State<Api>, headers: HeaderMap, query: QueryPairs) -> Response {
    let session = Session::of(&headers);
    let params = match Params::new(query, &with_notice(EVENT_PARAMS)) {
        Ok(params) => params,
        Err(error) => return problem(error),
    };
    let filter = match params.event_filter() {
        Ok(filter) => filter,
        Err(error) => return problem(error),
    };
    let page_of = match api.checkpoints().failures(&filter).await {
        Ok(page) => page,
        Err(error) => return problem(error.into()),
    };
    let mut body = filter_form("/console/failures", &params);
    if page_of.items.is_empty() {
        body.push_str("<p id=\"empty\">No recorded failure matches.</p>");
    } else {
        body.push_str(
            "<table id=\"failures\"><tr><th>id</th><th>topic</th><th>group</th><th>entity</th><th>event</th>\
             <th>error</th><th>attempts</th><th>first failed</th><th>last failed</th><th></th></tr>",
        );
        for failure in &page_of.items {
            let failure = serde_json::to_value(failure).unwrap_or_default();
            let id = failure.get("id").and_then(Value::as_i64).unwrap_or_default();
            let _ = write!(
                body,
                "<tr id=\"failure-{id}\"><td class=\"num\">{id}</td><td>{}</td><td>{}</td><td class=\"entity\">{}</td>\
                 <td>{}</td><td><b>{}</b> {}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td><td>{} {}</td></tr>",
                cell(failure.get("topic")),
                cell(failure.get("group_id")),
                cell(failure.get("entity_id")),
                cell(failure.get("event_type")),
                cell(failure.get("error_class")),
                cell(failure.get("error_message")),
                cell(failure.get("attempts")),
                cell(failure.get("first_failed_at")),
                cell(failure.get("last_failed_at")),
                button(&api, &session, &format!("/console/failures/{id}/retry"), "Retry", &[]),
                button(&api, &session, &format!("/console/failures/{id}/delete"), "Delete", &[]),
            );
        }
        body.push_str("</table>");
    }
    body.push_str(&pager("/console/failures", &params, filter.limit, filter.offset, page_of.items.len()));
    page(&session, "Failures", "Failures", notice(&params).as_deref(), &body)
}

async fn dead_letters(State(api): State<Api>, headers: HeaderMap, query: QueryPairs) -> Response {
    let session = Session::of(&headers);
    let params = match Params::new(query, &with_notice(DEAD_LETTER_PARAMS)) {
        Ok(params) => params,
        Err(error) => return problem(error),
    };
    let listed = async {
        let limit = params.integer("limit", 100, 1, i64::from(MAX_LIMIT))?;
        let filter = api::dead_letter_filter(&params)?;
        api::read_dead_letters(&api, filter, usize::try_from(limit).unwrap_or(100)).await
    };
    let letters = match listed.await {
        Ok(letters) => letters,
        Err(error) => return problem(error),
    };
    let topic = &api.config().consumer.dead_letter_topic;
    let mut body = format!(
        "<p>Messages the consumer could not apply, read from <code>{}</code>. Fix the cause, then replay them to \
         their source topics; a replay sends each dead letter once (its position is kept by the group \
         <code>{}-replay</code>).</p>",
        escape(topic),
        escape(topic)
    );
    let _ = write!(
        body,
        "<form method=\"post\" action=\"/console/dead-letters/replay\" id=\"replay\"><input type=\"hidden\" \
         name=\"csrf\" value=\"{}\"><label>reason <input name=\"reason\" value=\"{}\" size=\"16\"></label> \
         <label>source topic <input name=\"topic\" value=\"{}\" size=\"16\"></label> \
         <button type=\"submit\">Replay</button></form>",
        api.form_token(&session.id),
        escape(&params.text("reason").unwrap_or_default()),
        escape(&params.text("topic").unwrap_or_default()),
    );
    if letters.is_empty() {
        body.push_str("<p id=\"empty\">No dead letter matches.</p>");
    } else {
        body.push_str(
            "<table id=\"dead-letters\"><tr><th>partition@offset</th><th>reason</th><th>source</th><th>group</th>\
             <th>key</th><th>error</th><th>payload</th></tr>",
        );
        for letter in &letters {
            let letter = api::dead_letter_json(letter);
            let _ = write!(
                body,
                "<tr><td>{}@{}</td><td>{}</td><td>{}/{}@{}</td><td>{}</td><td class=\"mono\">{}</td><td>{}</td>\
                 <td class=\"mono\">{}</td></tr>",
                cell(letter.get("partition")),
                cell(letter.get("offset")),
                cell(letter.get("reason")),
                cell(letter.get("source_topic")),
                cell(letter.get("source_partition")),
                cell(letter.get("source_offset")),
                cell(letter.get("group_id")),
                cell(letter.get("key")),
                cell(letter.get("error")),
                cell(letter.get("payload")),
            );
        }
        body.push_str("</table>");
    }
    page(&session, "Dead letters", "Dead letters", notice(&params).as_deref(), &body)
}

async fn login(State(api): State<Api>, headers: HeaderMap) -> Response {
    if !api.requires_token() {
        return Redirect::to("/console").into_response();
    }
    login_page(&api, &headers, StatusCode::OK, None)
}

type FormPairs = Result<Form<Vec<(String, String)>>, FormRejection>;

/// The fields of a posted form, once its form token is checked against the session.
fn checked_form(api: &Api, headers: &HeaderMap, form: FormPairs) -> Result<BTreeMap<String, String>, Box<Response>> {
    let Form(pairs) =
        form.map_err(|rejection| Box::new(error_page(StatusCode::BAD_REQUEST, &rejection.body_text())))?;
    let fields: BTreeMap<String, String> = pairs.into_iter().collect();
    let session = Session::of(headers);
    let valid = !session.fresh && fields.get("csrf").is_some_and(|token| api.form_token_matches(&session.id, token));
    if valid {
        Ok(fields)
    } else {
        Err(Box::new(error_page(
            StatusCode::FORBIDDEN,
            "this form has expired or did not come from this console: reload the page and try again",
        )))
    }
}

async fn sign_in(State(api): State<Api>, headers: HeaderMap, form: FormPairs) -> Response {
    let fields = match checked_form(&api, &headers, form) {
        Ok(fields) => fields,
        Err(response) => return *response,
    };
    if !api.requires_token() {
        return Redirect::to("/console").into_response();
    }
    let token = fields.get("token").map(String::as_str).unwrap_or_default();
    if !api.token_matches(token) {
        return login_page(&api, &headers, StatusCode::UNAUTHORIZED, Some("That is not the token."));
    }
    let mut response = Redirect::to("/console").into_response();
    let cookie = api.login_cookie().unwrap_or_default();
    if let Ok(value) = HeaderValue::from_str(&format!("{LOGIN_COOKIE}={cookie}; Path=/; HttpOnly; SameSite=Strict")) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// A redirect to `to` showing `message`.
fn back(to: &str, message: &str) -> Response {
    Redirect::to(&format!("{to}?notice={}", encode(message))).into_response()
}

async fn retry_event(State(api): State<Api>, headers: HeaderMap, Path(id): Path<String>, form: FormPairs) -> Response {
    if let Err(response) = checked_form(&api, &headers, form) {
        return *response;
    }
    let id = match api::id(&id) {
        Ok(id) => id,
        Err(error) => return problem(error),
    };
    match api.checkpoints().retry_event(id).await {
        Ok(outcome) => back("/console/events", &describe("event", id, &outcome)),
        Err(error) => problem(error.into()),
    }
}

fn describe(what: &str, id: i64, outcome: &crate::checkpoint::RetryOutcome) -> String {
    let (status, body) = api::outcome(outcome);
    if status.is_success() {
        match body.get("event_id").and_then(Value::as_i64) {
            Some(event) => format!("Retried {what} {id}: the handler succeeded and acknowledged it (event {event})."),
            None => format!("Retried {what} {id}: the handler succeeded without an acknowledgement."),
        }
    } else {
        let error = body.get("error").and_then(Value::as_str).unwrap_or("unknown error");
        format!("Retried {what} {id}: the handler failed again: {error}")
    }
}

async fn retry_failure(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: FormPairs,
) -> Response {
    if let Err(response) = checked_form(&api, &headers, form) {
        return *response;
    }
    let id = match api::id(&id) {
        Ok(id) => id,
        Err(error) => return problem(error),
    };
    match api.checkpoints().retry_failure(id).await {
        Ok(crate::checkpoint::RetryOutcome::NotFound) => {
            back("/console/failures", &format!("Failure {id} is already gone."))
        }
        Ok(outcome) => back("/console/failures", &describe("failure", id, &outcome)),
        Err(error) => problem(error.into()),
    }
}

async fn delete_failure(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: FormPairs,
) -> Response {
    if let Err(response) = checked_form(&api, &headers, form) {
        return *response;
    }
    let id = match api::id(&id) {
        Ok(id) => id,
        Err(error) => return problem(error),
    };
    match api.checkpoints().delete_failure(id).await {
        Ok(true) => back("/console/failures", &format!("Deleted failure {id}.")),
        Ok(false) => back("/console/failures", &format!("Failure {id} is already gone.")),
        Err(error) => problem(error.into()),
    }
}

async fn retry_parked(State(api): State<Api>, headers: HeaderMap, Path(id): Path<String>, form: FormPairs) -> Response {
    if let Err(response) = checked_form(&api, &headers, form) {
        return *response;
    }
    let id = match api::id(&id) {
        Ok(id) => id,
        Err(error) => return problem(error),
    };
    let retried = async {
        let mut conn = crate::db::checkout(api.pool()).await?;
        Ok::<_, ApiError>(inspect::retry_parked(&mut conn, Some(id), None).await?)
    };
    match retried.await {
        Ok(0) => back("/console", &format!("Outbox row {id} is not parked (any more).")),
        Ok(_) => back("/console", &format!("Outbox row {id} will be published again.")),
        Err(error) => problem(error),
    }
}

async fn replay(State(api): State<Api>, headers: HeaderMap, form: FormPairs) -> Response {
    let fields = match checked_form(&api, &headers, form) {
        Ok(fields) => fields,
        Err(response) => return *response,
    };
    let text = |name: &str| fields.get(name).map(|value| value.trim().to_owned()).filter(|value| !value.is_empty());
    let filter = crate::consumer::dead_letters::DeadLetterFilter {
        reason: text("reason"),
        topic: text("topic"),
        from_offset: None,
        to_offset: None,
    };
    match api::replay(&api, filter, MAX_LIMIT, None).await {
        Ok(replayed) => back(
            "/console/dead-letters",
            &format!(
                "Replayed {} dead letter(s) of {} read; {} left out by the filters.",
                replayed.sent, replayed.read, replayed.left_out
            ),
        ),
        Err(error) => problem(error),
    }
}
