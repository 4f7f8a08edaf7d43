//! The web dashboard at `/ui`: one page, a script and a style sheet compiled into the
//! binary (no CDN; it works offline), drawing this node's admin API once a second.
//!
//! **Authentication.** The page and every call it makes go through the admin API's guard
//! with the same roles as any client (`read` to look, `admin` for failover controls,
//! `write` to resolve a conflict). A browser cannot add a bearer header to a page load, so
//! `POST /ui/login` takes a token (the same HS256 token the API takes), checks it, and
//! sets it as the `themis_token` cookie: `HttpOnly` (scripts cannot read it),
//! `SameSite=Strict` (other sites' pages cannot send it), `Secure` over TLS, `Path=/`. The
//! guard reads the cookie where no `Authorization` header is present. A request carried
//! by the cookie that changes anything must also carry `x-themis-ui: 1`, which a form on
//! another site cannot set. Without authentication configured the page simply opens.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response as HttpResponse};

use crate::admin::AdminState;

/// The page.
pub const INDEX_HTML: &str = include_str!("../ui/index.html");
/// Its script.
pub const APP_JS: &str = include_str!("../ui/app.js");
/// Its style sheet.
pub const APP_CSS: &str = include_str!("../ui/app.css");

/// The cookie that carries a dashboard session's token.
pub const COOKIE: &str = "themis_token";
/// The header a cookie-carried request that changes state must have.
pub const UI_HEADER: &str = "x-themis-ui";

/// What every dashboard response carries: no caching of data, no framing by other sites,
/// and scripts only from this node.
fn secured(mut response: HttpResponse) -> HttpResponse {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
             frame-ancestors 'none'; form-action 'self'",
        ),
    );
    response
}

fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    secured(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// `GET /ui`.
pub(crate) async fn index() -> HttpResponse {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /ui/app.js`.
pub(crate) async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// `GET /ui/app.css`.
pub(crate) async fn style() -> HttpResponse {
    asset("text/css; charset=utf-8", APP_CSS)
}

const LOGIN_FORM: &str = r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Themis replication: sign in</title>
<link rel="stylesheet" href="/ui/app.css"></head><body><main><section class="panel"><h2>Sign in</h2>
<form method="post" action="/ui/login"><p><label for="token">API token</label></p>
<p><input id="token" name="token" type="password" size="60" autocomplete="off" required></p>
<p><button type="submit">Open the dashboard</button></p>MESSAGE</form></section></main></body></html>"#;

fn login_page(status: StatusCode, message: &str) -> HttpResponse {
    let message = if message.is_empty() {
        String::new()
    } else {
        format!("<p class=\"error\">{}</p>", html_escape(message))
    };
    secured(
        (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            LOGIN_FORM.replace("MESSAGE", &message),
        )
            .into_response(),
    )
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// `GET /ui/login`: the sign-in form (open to anyone).
pub(crate) async fn login_form() -> HttpResponse {
    login_page(StatusCode::OK, "")
}

/// The largest sign-in form body.
pub(crate) const MAX_LOGIN_BYTES: usize = 16 << 10;

/// The sign-in form's fields.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct LoginForm {
    token: String,
}

/// `POST /ui/login` with a form `token=...`: checks the token and sets the session cookie,
/// or shows the form again with why it was refused.
pub(crate) async fn login(
    State(state): State<Arc<AdminState>>,
    form: Result<axum::Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> HttpResponse {
    let token = match &form {
        Ok(axum::Form(form)) => form.token.trim(),
        Err(axum::extract::rejection::FormRejection::BytesRejection(_)) => {
            return login_page(StatusCode::PAYLOAD_TOO_LARGE, "the form is too large");
        }
        Err(_) => "",
    };
    if token.is_empty() {
        return login_page(StatusCode::BAD_REQUEST, "enter a token");
    }
    if let Err(e) = state.shared.auth.token(token) {
        return login_page(StatusCode::UNAUTHORIZED, &e.to_string());
    }
    // A token is ASCII by construction (base64url and dots); anything else is refused above.
    let secure = if state.tls { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{secure}");
    let Ok(cookie) = HeaderValue::from_str(&cookie) else {
        return login_page(StatusCode::BAD_REQUEST, "the token holds characters a cookie cannot carry");
    };
    let mut out = secured((StatusCode::SEE_OTHER, [(header::LOCATION, "/ui")]).into_response());
    out.headers_mut().insert(header::SET_COOKIE, cookie);
    out
}

/// `POST /ui/logout`: clears the cookie.
pub(crate) async fn logout() -> HttpResponse {
    let mut out = secured((StatusCode::SEE_OTHER, [(header::LOCATION, "/ui/login")]).into_response());
    out.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("themis_token=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    out
}

/// The session token a request's cookie carries, if any.
pub(crate) fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|line| {
        line.split(';').find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == COOKIE && !v.is_empty()).then_some(v)
        })
    })
}

/// Whether `path` is one of the dashboard's own routes (refusals there lead to the form).
#[must_use]
pub fn is_page(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_cookies_are_read() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=b; themis_token=tok.en; c=d"));
        assert_eq!(cookie_token(&headers), Some("tok.en"));
        let mut empty = HeaderMap::new();
        empty.append(header::COOKIE, HeaderValue::from_static("themis_token="));
        assert_eq!(cookie_token(&empty), None);
    }

    #[test]
    fn the_page_loads_only_its_own_assets() {
        assert!(INDEX_HTML.contains("/ui/app.js") && INDEX_HTML.contains("/ui/app.css"));
        for text in [INDEX_HTML, APP_JS, APP_CSS] {
            assert!(!text.contains("http://") && !text.contains("https://"), "no remote asset");
        }
        assert!(
            is_page("/ui") && is_page("/ui/app.js") && !is_page("/uix") && !is_page("/v1/cluster/status")
        );
    }
}
