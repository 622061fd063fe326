//! MongooseIM's path dispatch under `/api`: decodes the segments, names
//! the route and its methods (`Allow`), answers `OPTIONS` before
//! authentication, authenticates (HTTP Basic), and calls the handler of
//! the route and method. It holds no handler logic and no state.

use std::borrow::Cow;

use super::contacts::*;
use super::ctx::{api_error, Ctx};
use super::messages::*;
use super::model::Mongoose;
use super::rooms::*;
use crate::handler::Cx;
use crate::http::{Method, Request, Response};

/// The `WWW-Authenticate` challenge of a 401.
const REALM_VALUE: &str = "Basic realm=\"ssed\"";

/// The handlers MongooseIM has, with their path bindings.
pub(super) enum Route<'s> {
    Sse,
    Messages(Option<&'s str>),
    Contacts(Option<&'s str>),
    Rooms(Option<&'s str>),
    RoomConfig(&'s str),
    RoomUsers(&'s str, Option<&'s str>),
    RoomMessages(&'s str),
}

/// An optional binding: cowboy's `[:x]` matches a trailing slash as absent.
pub(super) fn opt(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

impl<'s> Route<'s> {
    pub(super) fn parse(segs: &[&'s str]) -> Option<Route<'s>> {
        Some(match *segs {
            ["sse"] => Route::Sse,
            ["messages"] => Route::Messages(None),
            ["messages", w] => Route::Messages(opt(w)),
            ["contacts"] => Route::Contacts(None),
            ["contacts", j] => Route::Contacts(opt(j)),
            ["rooms"] => Route::Rooms(None),
            ["rooms", id] => Route::Rooms(opt(id)),
            ["rooms", id, "config"] => Route::RoomConfig(id),
            ["rooms", id, "users"] => Route::RoomUsers(id, None),
            ["rooms", id, "users", u] => Route::RoomUsers(id, opt(u)),
            ["rooms", id, "messages"] => Route::RoomMessages(id),
            _ => return None,
        })
    }

    /// The methods the route answers (`Allow`), OPTIONS included as in
    /// every MongooseIM handler.
    pub(super) fn allow(&self) -> &'static str {
        match self {
            Route::Sse | Route::Messages(Some(_)) => "OPTIONS, GET",
            Route::Messages(None) | Route::RoomMessages(_) => "OPTIONS, GET, POST",
            Route::Contacts(_) => "OPTIONS, GET, POST, PUT, DELETE",
            Route::Rooms(None) => "OPTIONS, GET, POST, PUT",
            Route::Rooms(Some(_)) => "OPTIONS, GET, PUT",
            Route::RoomConfig(_) => "OPTIONS, PUT",
            Route::RoomUsers(..) => "OPTIONS, POST, DELETE",
        }
    }
}

/// Routes `/api` + `rest`.
pub fn handle(core: &mut Cx<'_>, mg: &mut Mongoose, req: &Request<'_>, rest: &str) {
    let mut decoded: Vec<Cow<'_, str>> = Vec::new();
    for s in rest.strip_prefix('/').unwrap_or(rest).split('/') {
        match crate::http::decode_path(s) {
            Some(d) => decoded.push(d),
            None => return core.reply(req, api_error(400, "Path is not UTF-8")),
        }
    }
    let segs: Vec<&str> = decoded.iter().map(|s| &**s).collect();
    let route = Route::parse(&segs);
    // MongooseIM answers OPTIONS before authentication
    // (`is_noauth_http_method`), with cowboy's default: 200 and `Allow`.
    if req.method == Method::Options {
        return match route {
            Some(r) => {
                let resp = Response::new(200, "text/plain", Vec::new()).header("Allow", r.allow());
                core.reply(req, resp);
            }
            None => core.reply(req, api_error(404, "Not found")),
        };
    }
    let me = match mg.authenticate(req) {
        Ok(me) => me,
        Err(msg) => {
            core.counters.reject("unauthorized");
            let resp = api_error(401, msg).header("WWW-Authenticate", REALM_VALUE);
            return core.reply(req, resp);
        }
    };
    let mut cx = Ctx { core, mg, req, me };
    let Some(route) = route else {
        return cx.fail(404, "Not found");
    };
    let m = req.method;
    match (&route, m) {
        (Route::Sse, Method::Get) => sse(&mut cx),
        (Route::Messages(None), Method::Post) => send_message(&mut cx),
        (Route::Messages(with), Method::Get) => messages(&mut cx, *with),
        (Route::Contacts(None), Method::Get) => list_contacts(&mut cx),
        (Route::Contacts(Some(_)), Method::Get) => cx.fail(404, "JID provided but not supported"),
        // MongooseIM takes the JID of a new contact from the body only.
        (Route::Contacts(_), Method::Post) => add_contact(&mut cx),
        (Route::Contacts(None), Method::Put) => cx.fail(400, "Missing JID"),
        (Route::Contacts(Some(j)), Method::Put) => change_contact(&mut cx, j),
        (Route::Contacts(None), Method::Delete) => delete_contacts(&mut cx),
        (Route::Contacts(Some(j)), Method::Delete) => delete_contact(&mut cx, j),
        (Route::Rooms(None), Method::Get) => list_rooms(&mut cx),
        (Route::Rooms(None), Method::Post) => new_room(&mut cx, None),
        (Route::Rooms(None), Method::Put) => cx.fail(400, "Missing room ID"),
        (Route::Rooms(Some(id)), Method::Get) => room_details(&mut cx, id),
        (Route::Rooms(Some(id)), Method::Put) => create_room_with_id(&mut cx, id),
        (Route::RoomConfig(id), Method::Put) => change_config(&mut cx, id),
        (Route::RoomUsers(id, _), Method::Post) => add_user(&mut cx, id),
        (Route::RoomUsers(id, user), Method::Delete) => {
            remove_user(&mut cx, id, user.unwrap_or(""))
        }
        (Route::RoomMessages(id), Method::Get) => room_messages(&mut cx, id),
        (Route::RoomMessages(id), Method::Post) => send_room_message(&mut cx, id),
        _ => cx.not_allowed(route.allow()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_their_methods() {
        let allow = |p: &[&str]| Route::parse(p).map(|r| r.allow());
        assert_eq!(
            allow(&["contacts", "a@b"]),
            Some("OPTIONS, GET, POST, PUT, DELETE")
        );
        assert_eq!(allow(&["rooms"]), Some("OPTIONS, GET, POST, PUT"));
        assert_eq!(
            allow(&["rooms", "r", "users", ""]),
            Some("OPTIONS, POST, DELETE")
        );
        assert!(matches!(
            Route::parse(&["rooms", ""]),
            Some(Route::Rooms(None))
        ));
        assert!(Route::parse(&["nothing"]).is_none());
        assert!(Route::parse(&[""]).is_none());
    }

    #[test]
    fn segments() {
        assert_eq!(
            crate::http::decode_path("a%40b+c").as_deref(),
            Some("a@b+c")
        );
        assert_eq!(crate::http::decode_path("%ff"), None);
        assert_eq!(crate::http::decode_path("%4").as_deref(), Some("%4"));
    }
}
