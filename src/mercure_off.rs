//! Built without the `mercure` feature: no hub. Its path answers 404 with
//! the reason, rather than the bare "no such path".

use crate::handler::Cx;
use crate::http::Request;

/// The endpoint's path.
pub const PATH: &str = "/.well-known/mercure";

/// Answers the hub's path with why it is not here.
pub fn route(cx: &mut Cx<'_>, req: &Request<'_>) -> bool {
    if req.path != PATH {
        return false;
    }
    cx.fail(
        req,
        404,
        "the Mercure hub needs the `mercure` feature, which this ssed was built without",
    );
    true
}
