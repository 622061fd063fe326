//! A MongooseIM request being handled: the caller (authenticated), the
//! app's state and the core's context, with the answers in MongooseIM's
//! format (errors as the reason alone, a JSON string) and the body and
//! paging parsers every handler shares. It decides nothing about users,
//! contacts or rooms and never touches the model itself.

use serde_json::{Map, Value};

use super::model::Mongoose;
use super::DEFAULT_LIMIT;
use crate::handler::Cx;
use crate::http::{Request, Response};

/// MongooseIM's error body: the reason as a JSON string.
pub(super) fn reason_body(msg: &str) -> Vec<u8> {
    Value::String(msg.to_string()).to_string().into_bytes()
}

/// An error reply under `/api`.
pub(super) fn api_error(status: u16, msg: &str) -> Response {
    Response::new(status, "application/json", reason_body(msg))
}

/// Everything a handler needs about the request.
pub(super) struct Ctx<'a, 'c, 'r> {
    pub(super) core: &'a mut Cx<'c>,
    pub(super) mg: &'a mut Mongoose,
    pub(super) req: &'a Request<'r>,
    pub(super) me: String,
}

impl Ctx<'_, '_, '_> {
    pub(super) fn fail(&mut self, status: u16, msg: &str) {
        self.core.reply(self.req, api_error(status, msg));
    }
    pub(super) fn json(&mut self, v: &Value) {
        self.core.ok_json(self.req, v);
    }
    pub(super) fn status(&mut self, status: u16, body: Option<&Value>) {
        let resp = match body {
            _ if status == 204 => Response::no_content(),
            Some(v) => Response::json(status, v),
            None => Response::new(status, "application/json", Vec::new()),
        };
        self.core.reply(self.req, resp);
    }
    pub(super) fn not_allowed(&mut self, allow: &str) {
        let resp = api_error(405, "Method not allowed").header("Allow", allow);
        self.core.reply(self.req, resp);
    }
    /// `muclight.<caller's domain>`.
    pub(super) fn muc_domain(&self) -> String {
        format!(
            "muclight.{}",
            self.me.split_once('@').map_or("", |(_, d)| d)
        )
    }
    /// The JSON object body, or a 400 as MongooseIM's `parse_body`.
    pub(super) fn body_object(&mut self) -> Option<Map<String, Value>> {
        let parsed = std::str::from_utf8(&self.req.body)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(t).ok());
        match parsed {
            Some(Value::Object(o)) => Some(o),
            _ => {
                self.fail(400, "Invalid request body");
                None
            }
        }
    }
    /// `?limit=` and `?before=` (ms → µs), or a 400. Other keys are refused
    /// as MongooseIM's `parse_qs` refuses keys it has no atom for.
    pub(super) fn paging(&mut self, max_limit: usize) -> Option<(usize, Option<u64>)> {
        let known = self
            .req
            .query
            .split('&')
            .filter(|p| !p.is_empty())
            .all(|p| {
                let k = p.split_once('=').map_or(p, |(k, _)| k);
                matches!(
                    crate::http::decode_component(k).as_deref(),
                    Some("limit" | "before")
                )
            });
        if !known {
            self.fail(400, "Invalid query string");
            return None;
        }
        let limit = match self.req.query_first("limit") {
            None => DEFAULT_LIMIT,
            Some(l) => match l.parse::<usize>() {
                Ok(n) if n <= max_limit => n.min(DEFAULT_LIMIT),
                _ => {
                    self.fail(400, "Invalid limit");
                    return None;
                }
            },
        };
        let before = match self.req.query_first("before") {
            None => None,
            Some(b) => match b.parse::<u64>() {
                Ok(n) => Some(n.saturating_mul(1000)),
                Err(_) => {
                    self.fail(400, "Invalid value of 'before'");
                    return None;
                }
            },
        };
        Some((limit, before))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_json_strings() {
        assert_eq!(
            reason_body("Missing message body"),
            b"\"Missing message body\""
        );
        assert_eq!(
            reason_body("Invalid value of 'before'"),
            b"\"Invalid value of 'before'\""
        );
    }
}
