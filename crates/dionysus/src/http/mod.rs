//! The events API and the operations console (feature `http`): one axum [`Router`] that an
//! application embeds ([`router`]), or that `dionysus serve` runs ([`serve`]).
//!
//! ```no_run
//! # async fn run() -> Result<(), dionysus::http::HttpError> {
//! let api = dionysus::http::Api::new(dionysus::Config::from_env().unwrap_or_default())?
//!     .with_token(std::env::var("DIONYSUS_API_TOKEN").ok());
//! let listener = tokio::net::TcpListener::bind(dionysus::http::DEFAULT_LISTEN).await.map_err(|source| {
//!     dionysus::http::HttpError::Listener { source }
//! })?;
//! dionysus::http::serve(listener, api, tokio_util::sync::CancellationToken::new()).await
//! # }
//! ```
//!
//! ## The JSON API
//!
//! | route | answer |
//! |---|---|
//! | `GET /ping` | `PONG` (never needs a token) |
//! | `GET /health` | `ok`, or 503 when the database does not answer (never needs a token) |
//! | `GET /v1/events?limit=20&offset=0&entity_id=&topic=&group_id=&event_type=` | the checkpointed events, newest first, as a JSON array |
//! | `GET /v1/events/:id` | one event (as phobos_db_checkpoint's API shapes it) |
//! | `POST /v1/events/:id/retry` | runs the event's handler again on its stored payload |
//! | `GET /v1/failures` (same filters), `GET /v1/failures/:id` | recorded handler failures |
//! | `POST /v1/failures/:id/retry` | runs the handler again; on success the failure is gone and the event saved |
//! | `DELETE /v1/failures/:id` | forgets a failure |
//! | `GET /v1/outbox/stats` | `backlog`, `retrying`, `oldest_unpublished_seconds`, `parked` (`total`, `by_error_class`) |
//! | `GET /v1/outbox/parked?limit=&offset=` | parked (failed) outbox rows, oldest first |
//! | `POST /v1/outbox/parked/:id/retry` | makes a parked row publishable again |
//! | `GET /v1/dead-letters?limit=&reason=&topic=&from_offset=&to_offset=` | messages the consumer dead-lettered |
//! | `POST /v1/dead-letters/replay` | re-publishes dead letters to their source topics; JSON body (all optional): `reason`, `topic`, `from_offset`, `to_offset`, `limit`, `group` |
//!
//! Errors are JSON, `{"error": {"status": 404, "message": "no event with id 7"}}`, with the
//! same status; a bad parameter is a 400 naming it; `limit` is at most [`MAX_LIMIT`].
//!
//! ## The console
//!
//! `GET /` leads to `/console`: the outbox backlog and the age of its oldest row, parked rows
//! (with a retry button), the consumer groups with their stored offsets and lag per partition
//! (against the broker's high watermarks); `/console/events` and `/console/failures` with
//! filters and retry; `/console/dead-letters` with replay. Plain server-rendered HTML, no
//! script; every mutation is a `POST` form carrying a per-session token (an HMAC of the
//! session cookie under a secret drawn when the server starts).
//!
//! ## Security
//!
//! * [`serve`] refuses a non-loopback address without a token ([`HttpError::TokenRequired`]);
//!   `dionysus serve` listens on [`DEFAULT_LISTEN`] (`127.0.0.1:9396`) by default.
//! * With a token ([`Api::with_token`], `DIONYSUS_API_TOKEN` for `dionysus serve`), every
//!   route but `/ping` and `/health` needs `Authorization: Bearer <token>` (compared in
//!   constant time). A browser signs in once at `/console/login`, which sets an `HttpOnly`,
//!   `SameSite=Strict` cookie holding an HMAC of the token (not the token); the cookie is
//!   accepted by the console's pages only, never by the `/v1` routes.
//! * Mutations are `POST`/`DELETE` only; a request whose `Origin` is not this server's, or
//!   that the browser marks cross-site (`Sec-Fetch-Site`), is refused with 403; console forms
//!   also need their session token.
//! * Every query is parameterised; request bodies are limited to 16 KiB.
//!
//! An application embedding [`router`] binds it itself: the non-loopback rule is then its
//! own to keep (or it calls [`serve`]).
//!
//! This module owns the routes, their parameters, authentication and the HTML; the data
//! belong to the checkpoint store, the outbox, the consumer offsets and the dead-letter topic.

use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;

mod api;
mod auth;
mod console;
mod page;
mod state;

pub use state::{Api, HttpError, DEFAULT_LISTEN, MAX_BODY_BYTES, MAX_LIMIT, TOKEN_ENV};

/// Every route of the events API and the console over `api`; see the [module](self) docs.
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/ping", get(api::ping))
        .route("/health", get(api::health))
        .route("/v1/events", get(api::events))
        .route("/v1/events/{id}", get(api::event))
        .route("/v1/events/{id}/retry", post(api::retry_event))
        .route("/v1/failures", get(api::failures))
        .route("/v1/failures/{id}", get(api::failure).delete(api::delete_failure))
        .route("/v1/failures/{id}/retry", post(api::retry_failure))
        .route("/v1/outbox/stats", get(api::outbox_stats))
        .route("/v1/outbox/parked", get(api::outbox_parked))
        .route("/v1/outbox/parked/{id}/retry", post(api::retry_parked))
        .route("/v1/dead-letters", get(api::dead_letters))
        .route("/v1/dead-letters/replay", post(api::replay_dead_letters))
        .merge(console::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(api.clone(), auth::guard))
        .layer(DefaultBodyLimit::max(state::MAX_BODY_BYTES))
        .with_state(api)
}

/// Serves [`router`] on `listener` until `shutdown`. Refuses a non-loopback address without
/// a token, and an empty token.
pub async fn serve(listener: tokio::net::TcpListener, api: Api, shutdown: CancellationToken) -> Result<(), HttpError> {
    let address = listener.local_addr().map_err(|source| HttpError::Listener { source })?;
    api.check_address(address)?;
    tracing::info!(%address, token = api.requires_token(), "serving the events API and the console");
    let limits = crate::telemetry::ServeLimits {
        connections: 64,
        request_head: Duration::from_secs(5),
        // A dead-letter replay reads the topic for up to a minute.
        connection: Duration::from_secs(120),
        request_bytes: state::MAX_BODY_BYTES,
        accept_pause: Duration::from_millis(100),
    };
    crate::telemetry::serve_router(listener, router(api), limits, "the events API", shutdown).await;
    Ok(())
}

/// 404: JSON under `/v1`, a page elsewhere.
async fn not_found(uri: axum::http::Uri) -> Response {
    if uri.path() == "/v1" || uri.path().starts_with("/v1/") {
        api::ApiError::not_found(format!("no route {}", uri.path())).into_response()
    } else {
        page::not_found(uri.path())
    }
}
