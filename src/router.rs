//! Routing: which handler answers a request. CORS is asked of the access
//! rule once per request (preflights answered here, allowed origins echoed
//! into every reply through the context); the built-in apps get their paths first,
//! the core API next, the Accept-detected app stream last.
//!
//! It dispatches only; handlers decide and return actions.

use crate::apps::{self, Apps};
use crate::handler::Cx;
use crate::http::{Method, Request, Response};

/// Routes one complete request.
pub fn handle(cx: &mut Cx<'_>, apps: &mut Apps, req: &Request<'_>) {
    cx.cors = cx.access.cors(req);
    if req.method == Method::Options && !cx.cors.is_empty() {
        let resp = Response::no_content()
            .header(
                "Access-Control-Allow-Methods",
                "GET, POST, PUT, DELETE, OPTIONS",
            )
            .header(
                "Access-Control-Allow-Headers",
                "Last-Event-ID, Authorization, Content-Type, Cache-Control, Member-ID, Device-Id",
            )
            .header("Access-Control-Max-Age", "600");
        return cx.reply(req, resp);
    }
    if req.method == Method::Options && req.header("access-control-request-method").is_some() {
        if let Some(origin) = req.header_str("origin") {
            // A CORS preflight from an origin not allowed: say so, rather
            // than a 405 whose Allow lists OPTIONS.
            cx.counters.reject("cors_origin");
            let msg = format!("origin {origin:?} is not allowed; allow it with --cors-origin (or SSED_CORS_ORIGIN)");
            return cx.fail(req, 403, &msg);
        }
    }
    if apps::route(cx, apps, req)
        || crate::api::route(cx, req)
        || crate::mercure::route(cx, req)
        || apps::fallback(cx, req)
    {
        return;
    }
    cx.fail(req, 404, "no such path");
}
