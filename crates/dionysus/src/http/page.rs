//! What every console page shares: escaping, the frame, error and sign-in pages, the cookies
//! and the session that keys the form tokens.

use std::fmt::Write as _;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::state::{hex, Api};

/// `Content-Type` of HTML pages.
const HTML: (header::HeaderName, &str) = (header::CONTENT_TYPE, "text/html; charset=utf-8");

/// The console's login cookie (an HMAC of the token, see `Api::login_cookie`).
pub(super) const LOGIN_COOKIE: &str = "dionysus_login";

/// The console's session cookie: a random id keying the form tokens.
pub(super) const SESSION_COOKIE: &str = "dionysus_session";

/// The value of cookie `name`.
pub(super) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim().to_owned())
}

/// The console's session: its id, and whether the response must set the cookie.
#[derive(Debug, Clone)]
pub(super) struct Session {
    pub(super) id: String,
    pub(super) fresh: bool,
}

impl Session {
    /// The request's session, or a new one.
    pub(super) fn of(headers: &HeaderMap) -> Session {
        match cookie(headers, SESSION_COOKIE).filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())) {
            Some(id) => Session { id, fresh: false },
            None => Session { id: hex(&rand::random::<[u8; 16]>()), fresh: true },
        }
    }

    /// The `Set-Cookie` header a fresh session needs.
    pub(super) fn set_cookie(&self) -> Option<HeaderValue> {
        if !self.fresh {
            return None;
        }
        HeaderValue::from_str(&format!("{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict", self.id)).ok()
    }
}

/// `text` with `&`, `<`, `>`, `"` and `'` replaced by entities: safe in element content and
/// in quoted attribute values.
pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `text` percent-encoded for a query string value.
pub(super) fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}\
header{background:#1d2330;color:#fff;padding:.6em 1.2em;display:flex;gap:1.5em;align-items:baseline}\
header a{color:#cfd6e4;text-decoration:none}header a.on{color:#fff;font-weight:600}\
main{padding:1em 1.2em}h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.6em}\
table{border-collapse:collapse;background:#fff;width:100%}td,th{border:1px solid #dde1e8;padding:.3em .5em;\
text-align:left;vertical-align:top}th{background:#eef0f4}td.num{text-align:right}\
.notice{background:#e8f4ea;border:1px solid #9fcca8;padding:.5em .8em}\
.problem{background:#fbeaea;border:1px solid #e0a3a3;padding:.5em .8em}\
form.inline{display:inline}button{cursor:pointer}code,.mono{font-family:ui-monospace,monospace;font-size:.92em}\
td.mono{max-width:28em;overflow-wrap:anywhere}\
.stats{display:flex;gap:1em}.stat{background:#fff;border:1px solid #dde1e8;padding:.6em 1em}\
.stat b{display:block;font-size:1.5em}";

/// The page frame around `body`, with the session cookie when the session is new.
pub(super) fn page(session: &Session, title: &str, active: &str, notice: Option<&str>, body: &str) -> Response {
    page_with_status(session, StatusCode::OK, title, active, notice, body)
}

pub(super) fn page_with_status(
    session: &Session,
    status: StatusCode,
    title: &str,
    active: &str,
    notice: Option<&str>,
    body: &str,
) -> Response {
    let mut html = String::with_capacity(body.len() + 2048);
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} · dionysus</title>\
         <meta name=\"viewport\" content=\"width=device-width\"><style>{STYLE}</style></head><body><header>\
         <strong>dionysus</strong>",
        escape(title)
    );
    for (href, name) in [
        ("/console", "Overview"),
        ("/console/events", "Events"),
        ("/console/failures", "Failures"),
        ("/console/dead-letters", "Dead letters"),
    ] {
        let class = if name == active { " class=\"on\"" } else { "" };
        let _ = write!(html, "<a href=\"{href}\"{class}>{name}</a>");
    }
    html.push_str("</header><main>");
    let _ = write!(html, "<h1>{}</h1>", escape(title));
    if let Some(notice) = notice {
        let _ = write!(html, "<p class=\"notice\" id=\"notice\">{}</p>", escape(notice));
    }
    html.push_str(body);
    html.push_str("</main></body></html>");
    let mut response = (status, [HTML], html).into_response();
    if let Some(cookie) = session.set_cookie() {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response.headers_mut().insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// An error page (no session needed).
pub(super) fn error_page(status: StatusCode, message: &str) -> Response {
    let session = Session { id: String::new(), fresh: false };
    let body =
        format!("<p class=\"problem\">{}</p><p><a href=\"/console\">Back to the overview</a></p>", escape(message));
    page_with_status(&session, status, status.canonical_reason().unwrap_or("Error"), "", None, &body)
}

pub(super) fn not_found(path: &str) -> Response {
    error_page(StatusCode::NOT_FOUND, &format!("nothing at {path}"))
}

/// The sign-in page.
pub(super) fn login_page(api: &Api, headers: &HeaderMap, status: StatusCode, problem: Option<&str>) -> Response {
    let session = Session::of(headers);
    let mut body = String::new();
    if let Some(problem) = problem {
        let _ = write!(body, "<p class=\"problem\">{}</p>", escape(problem));
    }
    let _ = write!(
        body,
        "<p>This console needs the server's API token (<code>DIONYSUS_API_TOKEN</code>).</p>\
         <form method=\"post\" action=\"/console/login\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <label>token <input type=\"password\" name=\"token\" autocomplete=\"current-password\"></label> \
         <button type=\"submit\">Sign in</button></form>",
        api.form_token(&session.id)
    );
    page_with_status(&session, status, "Sign in", "", None, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            escape("<a href=\"x\" onclick='y'>&</a>"),
            "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;&lt;/a&gt;"
        );
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }

    proptest::proptest! {
        #[test]
        fn escaped_text_has_no_markup(text in ".*") {
            let escaped = escape(&text);
            proptest::prop_assert!(!escaped.contains(['<', '>', '"', '\'']));
            let unescaped = escaped.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&#39;", "'").replace("&amp;", "&");
            proptest::prop_assert_eq!(unescaped, text);
        }
    }
}
