//! The demo page: `GET /` and its files under `/demo/`, all built into the binary from
//! `web/` (no build step, nothing fetched from other hosts), served only with
//! `server.demo_page`. The page talks to the server over the same public endpoints as
//! any client (`/v1/ws`, `/v1/events`), so it needs nothing else here.
//!
//! URLs in the page are relative, so it also works behind a path prefix (nginx's
//! `/hearken/`). Its Content-Security-Policy allows only this origin: a page that tried
//! to reach another host would be stopped by the browser.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use bytes::Bytes;

/// The page, with `data-auth="none"` as the marker the server rewrites when tokens are
/// configured (the page then asks for one before it connects).
const INDEX: &str = include_str!("../../web/index.html");
const AUTH_OFF: &str = r#"data-auth="none""#;
const AUTH_ON: &str = r#"data-auth="token""#;

/// The page's other files: name under `/demo/`, content type, contents.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../web/style.css"),
    ),
    ("app.js", JS, include_str!("../../web/app.js")),
    ("session.js", JS, include_str!("../../web/session.js")),
    ("audio.js", JS, include_str!("../../web/audio.js")),
    ("view.js", JS, include_str!("../../web/view.js")),
    ("lifecycle.js", JS, include_str!("../../web/lifecycle.js")),
    ("resampler.js", JS, include_str!("../../web/resampler.js")),
    (
        "capture.worklet.js",
        JS,
        include_str!("../../web/capture.worklet.js"),
    ),
    (
        "playback.worklet.js",
        JS,
        include_str!("../../web/playback.worklet.js"),
    ),
];
const JS: &str = "text/javascript; charset=utf-8";

/// Only this origin, for scripts, worklets, styles and connections (`'self'` covers
/// `ws:`/`wss:` to the same host); the favicon is an inline `data:` image.
const CSP: &str = "default-src 'self'; img-src 'self' data:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

/// The demo page's routes; cheap to clone into every HTTP worker.
#[derive(Clone)]
pub struct DemoPage {
    index: Bytes,
}

impl DemoPage {
    pub fn new(auth_required: bool) -> DemoPage {
        let index = if auth_required {
            INDEX.replacen(AUTH_OFF, AUTH_ON, 1)
        } else {
            INDEX.to_string()
        };
        DemoPage {
            index: Bytes::from(index),
        }
    }

    /// Add `GET /` and `GET /demo/{file}` to an app.
    pub fn routes(self, cfg: &mut web::ServiceConfig) {
        cfg.app_data(web::Data::new(self))
            .route("/", web::get().to(index))
            .route("/demo/{file}", web::get().to(asset));
    }
}

async fn index(page: web::Data<DemoPage>) -> HttpResponse {
    let mut response = file_response("text/html; charset=utf-8", page.index.clone());
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(CSP),
    );
    response
}

async fn asset(file: web::Path<String>) -> HttpResponse {
    match ASSETS.iter().find(|(name, _, _)| *name == file.as_str()) {
        Some((_, content_type, body)) => {
            file_response(content_type, Bytes::from_static(body.as_bytes()))
        }
        None => HttpResponse::NotFound().finish(),
    }
}

/// `no-cache`: a browser revalidates, so a new binary's page is never mixed with an old
/// one's scripts.
fn file_response(content_type: &str, body: Bytes) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_marker_is_in_the_page_once() {
        assert_eq!(INDEX.matches(AUTH_OFF).count(), 1);
        let page = DemoPage::new(true);
        let html = std::str::from_utf8(&page.index).unwrap();
        assert!(html.contains(AUTH_ON) && !html.contains(AUTH_OFF));
    }

    #[test]
    fn every_module_the_page_loads_is_served() {
        // Each `./name.js` imported or added as a worklet must be an asset.
        for (_, _, body) in ASSETS {
            for piece in body.split(['\'', '"']).filter(|p| p.starts_with("./")) {
                let name = piece.trim_start_matches("./");
                if name.ends_with(".js") {
                    assert!(
                        ASSETS.iter().any(|(n, _, _)| *n == name),
                        "{name} is loaded but not served"
                    );
                }
            }
        }
        for piece in INDEX.split('"').filter(|p| p.starts_with("demo/")) {
            let name = piece.trim_start_matches("demo/");
            assert!(ASSETS.iter().any(|(n, _, _)| *n == name), "{name}");
        }
    }
}
