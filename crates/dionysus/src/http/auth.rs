//! Who may do what: the bearer token, the console's login cookie, refusing cross-site
//! mutations, and the session cookie that keys the console's form tokens.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::api::ApiError;
use super::page::{cookie, error_page, login_page, LOGIN_COOKIE};
use super::state::Api;

/// Whether a browser says this request comes from another site: `Sec-Fetch-Site` other than
/// `same-origin`/`none`, or an `Origin` whose host is not the request's `Host`.
fn cross_site(headers: &HeaderMap) -> bool {
    let fetch_site = headers.get("sec-fetch-site").and_then(|value| value.to_str().ok());
    if fetch_site.is_some_and(|site| site != "same-origin" && site != "none") {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN) else { return false };
    let host = headers.get(header::HOST).and_then(|value| value.to_str().ok());
    let origin_host =
        origin.to_str().ok().and_then(|origin| origin.split_once("://")).map(|(_, rest)| rest.trim_end_matches('/'));
    match (origin_host, host) {
        (Some(origin_host), Some(host)) => !origin_host.eq_ignore_ascii_case(host),
        _ => true,
    }
}

/// Whether `path` is a console page (the login cookie counts there, and failures are HTML).
fn is_console(path: &str) -> bool {
    path == "/" || path == "/console" || path.starts_with("/console/")
}

/// The middleware in front of every route.
pub(super) async fn guard(State(api): State<Api>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    if path == "/ping" || path == "/health" {
        return next.run(request).await;
    }
    let mutating = !matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if mutating && cross_site(request.headers()) {
        let message = "cross-site request refused: mutations are accepted from this server's own pages or from \
                       non-browser clients only";
        return if is_console(&path) {
            error_page(StatusCode::FORBIDDEN, message)
        } else {
            ApiError::new(StatusCode::FORBIDDEN, message).into_response()
        };
    }
    if !api.requires_token() {
        return next.run(request).await;
    }
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    if bearer.is_some_and(|token| api.token_matches(token)) {
        return next.run(request).await;
    }
    if is_console(&path) {
        let signed_in = cookie(request.headers(), LOGIN_COOKIE).is_some_and(|value| api.login_cookie_matches(&value));
        if signed_in || path == "/console/login" {
            return next.run(request).await;
        }
        return login_page(&api, request.headers(), StatusCode::UNAUTHORIZED, None);
    }
    let message = match bearer {
        Some(_) => "the bearer token is wrong",
        None => "this route needs `Authorization: Bearer <token>` (the server's DIONYSUS_API_TOKEN)",
    };
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}
