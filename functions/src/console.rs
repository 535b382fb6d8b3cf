//! The web console's assets, embedded in the binary at build time from `console/dist` (built
//! by `npm run build` and committed, so no Node is needed to build or run Ferry; CI checks the
//! committed build matches the sources). Served at `/console/`: hashed assets for a year, the
//! HTML shell never cached, every path that is not an asset answered with the shell so the
//! console's own router can show it.
//!
//! Also the security headers every answer carries (`secure_headers`).

use axum::Router;
use axum::extract::{Path, Request};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use include_dir::{Dir, include_dir};

use crate::app::AppState;

static DIST: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../console/dist");

/// Where the console lives.
pub const BASE: &str = "/console/";

/// Scripts, styles and connections from this origin only; nothing inline, no frames.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; font-src 'self'; connect-src 'self'; \
    frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to(BASE) }))
        .route("/console", get(|| async { Redirect::to(BASE) }))
        .route("/console/", get(shell))
        .route("/console/{*path}", get(asset))
}

async fn shell() -> Response {
    match DIST.get_file("index.html") {
        Some(file) => answer(file.contents(), "text/html; charset=utf-8", "no-store"),
        None => (
            StatusCode::NOT_FOUND,
            "the console was not built into this binary",
        )
            .into_response(),
    }
}

async fn asset(Path(path): Path<String>) -> Response {
    match DIST.get_file(&path) {
        Some(file) if path != "index.html" => {
            // Vite names what it hashes under assets/: those never change under their name.
            let cache = if path.starts_with("assets/") {
                "public, max-age=31536000, immutable"
            } else {
                "no-cache"
            };
            answer(file.contents(), content_type(&path), cache)
        }
        // A missing asset is a 404; any other path is a page of the console.
        None if path.starts_with("assets/") => StatusCode::NOT_FOUND.into_response(),
        _ => shell().await,
    }
}

fn answer(body: &'static [u8], content_type: &'static str, cache: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, cache),
        ],
        body,
    )
        .into_response()
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, extension)| extension) {
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("html") => "text/html; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Headers on every answer: no sniffing, no referrer, no framing, the console's CSP, and
/// `no-store` unless the handler chose a cache policy (API answers are never cached).
pub async fn secure_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let set = |headers: &mut axum::http::HeaderMap, name: HeaderName, value: &'static str| {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    };
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        CONTENT_SECURITY_POLICY,
    );
    set(headers, header::CACHE_CONTROL, "no-store");
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_is_embedded_and_its_shell_loads_only_hashed_assets() {
        let shell = std::str::from_utf8(DIST.get_file("index.html").unwrap().contents()).unwrap();
        assert!(
            !shell.contains("<script>"),
            "no inline script: the CSP forbids it"
        );
        assert!(
            !shell.contains("<style"),
            "no inline style: the CSP forbids it"
        );
        for reference in shell.split("/console/assets/").skip(1) {
            let name = reference.split('"').next().unwrap();
            assert!(
                DIST.get_file(format!("assets/{name}")).is_some(),
                "index.html loads assets/{name}, which the build lacks"
            );
        }
    }

    #[test]
    fn assets_have_their_types() {
        assert_eq!(
            content_type("assets/index-abc.js"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            content_type("assets/index-abc.css"),
            "text/css; charset=utf-8"
        );
        assert_eq!(content_type("favicon.svg"), "image/svg+xml");
        assert_eq!(content_type("odd"), "application/octet-stream");
    }
}
