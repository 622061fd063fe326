//! Internals exposed for the benchmarks and the fuzz targets only: not
//! part of the API, hidden from the docs, and free to change.

pub use crate::broker::{Broker, Cursors, Limits, Resume};
pub use crate::id::{ConnKey, EventId};

/// The request parser.
pub mod http {
    pub use crate::http::{
        decode_chunked, parse, parse_resume, HttpError, Limits, Parsed, Request, Scan,
    };
}

/// SSE encoding.
pub mod frame {
    pub use crate::frame::{encode, encode_numbered};
}

/// Minting HS256 tokens (tests, token tools); topic selectors (the
/// selector bench times matching in-process); draft-08 tokens, URL
/// patterns and the URL parser under them (issue 21).
#[cfg(feature = "mercure")]
pub mod auth {
    pub use crate::auth::draft08;
    pub use crate::auth::jwt::mint_hs256_typ;
    pub use crate::auth::selector;
    pub use crate::auth::url::Url;
    pub use crate::auth::urlpattern::{Component, PatternError, UrlPattern};
    pub use crate::auth::{mint_hs256, Key};
}
