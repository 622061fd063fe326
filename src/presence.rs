//! Mercure active subscriptions (`--mercure-subscriptions`; the draft's
//! "Active Subscriptions"): what a hub subscriber's subscriptions are
//! announced as, and this node's table of every node's active ones.
//!
//! A subscriber gets a random id (`urn:uuid:` + UUIDv4) when it connects;
//! each of its subscriptions (a `match`/`match_urlpattern` value, or a
//! legacy `topic=` selector) becomes the topic
//! `/.well-known/mercure/subscriptions/{match_type}/{match}/{subscriber}`
//! (both variables percent-encoded once) and the JSON-LD document the
//! draft describes. [`Presence`] keeps, per connection, what it joined
//! with (a side table: `Conn` does not grow), queues the updates to
//! publish when its stream starts and ends (the reactor publishes them at
//! the end of its turn), and keeps the
//! active subscriptions it heard of, which the subscriptions API lists.
//! Locally it applies its own updates; with `--redis` it learns every
//! node's (its own included) from the bus announcements, so every node
//! lists every node's subscribers.
//!
//! Bookkeeping only: it must not publish (the reactor sends the updates
//! through the one publish path), decide access (`mercure.rs` asks the
//! access rule), or touch sockets. Off (the default), it holds nothing.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use rand::RngCore;
use serde_json::{json, Map, Value};

use crate::id::ConnKey;

/// Where the subscriptions API and the events' topics live: the hub's
/// path, then `/subscriptions`.
pub const PREFIX: &str = "/.well-known/mercure/subscriptions";

/// Whether `name` is a subscription update's topic (under [`PREFIX`]).
pub fn is_update_topic(name: &str) -> bool {
    name.strip_prefix(PREFIX)
        .is_some_and(|r| r.starts_with('/'))
}
/// The SSE `event:` of subscription updates (publishers may not use it).
pub const EVENT: &str = "mercure";
/// The documents' JSON-LD context.
pub const CONTEXT: &str = "https://mercure.rocks/";
/// Most active subscriptions a node lists: past it, new ones heard are not
/// listed (their events are still published), so a flood cannot grow the
/// table without bound.
pub const MAX_ACTIVE: usize = 1 << 18;
/// Most bytes (strings, payloads, and an estimate of the table's own cost
/// per row) the listed subscriptions hold, for the same reason: matchers
/// are up to 1 KiB each.
pub const MAX_ACTIVE_BYTES: usize = 64 << 20;
/// What a row costs besides its strings (its place in the table, `Rc`
/// headers), as the byte bound counts it.
const ROW_BYTES: usize = 128;
/// The `match_type` of a legacy URI-template subscription (`topic=` with
/// braces): not a draft-08 type, so a client of the draft can tell.
pub const URI_TEMPLATE: &str = "uritemplate";
/// Match types the API accepts in its paths.
const TYPES: [&str; 3] = ["exact", "urlpattern", URI_TEMPLATE];

/// One subscription of a subscriber. Its strings are shared (`Rc`)
/// between the connection's entry and the node's table.
#[derive(Debug, Clone, PartialEq)]
pub struct Sub {
    /// `exact`, `urlpattern` or [`URI_TEMPLATE`].
    pub match_type: &'static str,
    /// The matcher as the subscriber gave it.
    pub matcher: Rc<str>,
    /// The token's payload for it (draft-08: the first subscribe detail
    /// whose topics match the matcher).
    pub payload: Option<Rc<Value>>,
}

/// What a connection subscribed with: its subscriber id and subscriptions.
#[derive(Debug)]
pub struct Joined {
    subscriber: Rc<str>,
    /// Its client address's key: the streams its updates go to are made
    /// in that address's share of the subscribers' pool, like the streams
    /// it reads, so subscribers cannot fill the publishers' pool.
    peer: u128,
    subs: Box<[Sub]>,
    /// Its `active: true` updates went out (so its end is announced).
    announced: bool,
}

impl Joined {
    /// What its record costs in `Presence::mine`: the box, the table's
    /// slot, the subscription list and the strings it owns (a payload is
    /// the token's, shared, and counted once, here, as an upper bound).
    fn cost(&self) -> usize {
        const SLOT: usize = std::mem::size_of::<(ConnKey, Box<Joined>)>() + 8;
        let subs: usize = self
            .subs
            .iter()
            .map(|s| {
                std::mem::size_of::<Sub>()
                    + s.matcher.len()
                    + s.payload.as_ref().map_or(0, |p| p.to_string().len())
            })
            .sum();
        SLOT + std::mem::size_of::<Joined>() + self.subscriber.len() + subs
    }

    /// A subscriber with a fresh random id. Subscriptions whose topic
    /// would be longer than `max_topic` bytes (a topic's bound) are not
    /// announced; repeats are announced once.
    pub fn new(rng: &mut impl RngCore, peer: u128, subs: Vec<Sub>, max_topic: usize) -> Joined {
        let subscriber: Rc<str> = uuid_urn(rng).into();
        let mut kept: Vec<Sub> = Vec::with_capacity(subs.len());
        for s in subs {
            let fits = topic(s.match_type, &s.matcher, &subscriber).len() <= max_topic;
            let again = kept
                .iter()
                .any(|k| k.match_type == s.match_type && k.matcher == s.matcher);
            if fits && !again {
                kept.push(s);
            }
        }
        Joined {
            subscriber,
            peer,
            subs: kept.into(),
            announced: false,
        }
    }

    /// The subscriber id.
    #[cfg(test)]
    fn subscriber(&self) -> &str {
        &self.subscriber
    }
}

/// A random UUIDv4 as a URN.
pub fn uuid_urn(rng: &mut impl RngCore) -> String {
    let mut b = [0u8; 16];
    rng.fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Percent-encodes all but RFC 3986's unreserved characters, once (a `%`
/// already there is encoded too), as RFC 6570 expansion does.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A subscription's topic (and its document's `id`).
pub fn topic(match_type: &str, matcher: &str, subscriber: &str) -> String {
    format!(
        "{PREFIX}/{match_type}/{}/{}",
        encode(matcher),
        encode(subscriber)
    )
}

/// A subscription's document (without `@context`).
fn doc(
    match_type: &str,
    matcher: &str,
    subscriber: &str,
    active: bool,
    payload: Option<&Value>,
) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), topic(match_type, matcher, subscriber).into());
    m.insert("type".into(), "Subscription".into());
    m.insert("match_type".into(), match_type.into());
    m.insert("match".into(), matcher.into());
    m.insert("subscriber".into(), subscriber.into());
    m.insert("active".into(), active.into());
    if let Some(p) = payload {
        m.insert("payload".into(), p.clone());
    }
    Value::Object(m)
}

/// `d` with the JSON-LD context, as events and single answers carry it.
fn with_context(mut d: Value) -> Value {
    if let Some(m) = d.as_object_mut() {
        m.insert("@context".into(), CONTEXT.into());
    }
    d
}

/// A listed subscription: subscriber, match type, matcher (the topic is
/// spelled from them when needed, not kept).
type Key = (Rc<str>, &'static str, Rc<str>);

/// A subscription update to publish: its strings are spelled when it is
/// published, so a queued one holds only shared ones.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    who: Rc<str>,
    sub: Sub,
    active: bool,
    /// The subscriber's client address key (whose pool share makes the
    /// topic's stream).
    pub peer: u128,
}

impl Update {
    /// Its topic.
    pub fn topic(&self) -> String {
        topic(self.sub.match_type, &self.sub.matcher, &self.who)
    }

    /// Its document, as the event's `data:`.
    pub fn data(&self) -> String {
        let s = &self.sub;
        let d = doc(
            s.match_type,
            &s.matcher,
            &self.who,
            self.active,
            s.payload.as_deref(),
        );
        with_context(d).to_string()
    }
}

/// A node's active subscriptions, and what its own connections joined with.
#[derive(Debug, Default)]
pub struct Presence {
    on: bool,
    /// This node's subscribers, by connection: a side table, so a
    /// connection costs nothing here unless it is a hub subscriber and
    /// the feature is on.
    mine: HashMap<ConnKey, Box<Joined>>,
    /// Active subscriptions heard of (every node's with `--redis`), their
    /// payloads and what each costs (see [`MAX_ACTIVE_BYTES`]).
    active: BTreeMap<Key, (Option<Rc<Value>>, usize)>,
    /// The sum of those costs.
    bytes: usize,
    /// What this node's entries in `mine` cost (see [`Joined::cost`]).
    mine_bytes: usize,
    /// Updates to publish, in order: the reactor publishes them at the end
    /// of its turn, not from inside a write or a close.
    pending: Vec<Update>,
    /// Subscriptions not listed because the table was full.
    pub unlisted: u64,
}

impl Presence {
    /// The table; `on`: `--mercure-subscriptions`.
    pub fn new(on: bool) -> Presence {
        Presence {
            on,
            ..Presence::default()
        }
    }

    /// Whether no connection of this node is a subscriber it tracks (the
    /// close path's cheap test).
    pub fn none_here(&self) -> bool {
        self.mine.is_empty()
    }

    /// Connection `conn` subscribed with `j` (its stream is not up yet).
    pub fn join(&mut self, conn: ConnKey, j: Box<Joined>) {
        if self.on {
            self.mine_bytes += j.cost();
            if let Some(old) = self.mine.insert(conn, j) {
                self.mine_bytes -= old.cost();
            }
        }
    }

    /// Bytes the feature holds: the active subscriptions listed and this
    /// node's subscribers' records (the memory account's `presence` kind).
    pub fn bytes(&self) -> usize {
        self.bytes + self.mine_bytes
    }

    /// `conn`'s stream started: its `active: true` updates are pending.
    /// `local` (no bus): listed now; else when the bus announces them.
    pub fn started(&mut self, conn: ConnKey, local: bool) {
        let Some(j) = self.mine.get_mut(&conn) else {
            return;
        };
        j.announced = true;
        // `Rc` clones: the strings stay shared.
        let (who, peer, subs) = (j.subscriber.clone(), j.peer, j.subs.to_vec());
        for sub in subs {
            self.update(&who, sub, peer, true, local);
        }
    }

    /// `conn` ended: its `active: false` updates are pending, if its start
    /// was announced.
    pub fn left(&mut self, conn: ConnKey, local: bool) {
        if let Some(j) = self.mine.remove(&conn) {
            self.mine_bytes -= j.cost();
            if j.announced {
                for sub in j.subs.iter() {
                    self.update(&j.subscriber, sub.clone(), j.peer, false, local);
                }
            }
        }
    }

    /// Whether updates wait to be published.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The updates to publish now.
    pub fn take_pending(&mut self) -> Vec<Update> {
        std::mem::take(&mut self.pending)
    }

    fn update(&mut self, who: &Rc<str>, sub: Sub, peer: u128, active: bool, local: bool) {
        if local {
            let key = (who.clone(), sub.match_type, sub.matcher.clone());
            self.apply(key, active, sub.payload.clone());
        }
        self.pending.push(Update {
            who: who.clone(),
            sub,
            active,
            peer,
        });
    }

    /// An event entered through the bus on streams `names` (SSE bytes
    /// `frame`): a subscription update's document updates the table.
    /// Returns its topic when it was one.
    pub fn heard<'n>(
        &mut self,
        mut names: impl Iterator<Item = &'n str>,
        frame: &[u8],
    ) -> Option<String> {
        if !self.on {
            return None;
        }
        let name = names.find(|n| is_update_topic(n))?;
        let d = document(frame)?;
        let str_of = |k: &str| d.get(k).and_then(Value::as_str);
        let match_type = TYPES
            .into_iter()
            .find(|t| str_of("match_type") == Some(t))?;
        let (matcher, who) = (str_of("match")?, str_of("subscriber")?);
        // Only the hub's own updates: the document names its topic.
        if str_of("type") != Some("Subscription")
            || str_of("id") != Some(name)
            || topic(match_type, matcher, who) != name
        {
            return None;
        }
        let active = d.get("active").and_then(Value::as_bool)?;
        let payload = d.get("payload").cloned().map(Rc::new);
        self.apply((who.into(), match_type, matcher.into()), active, payload);
        Some(name.to_string())
    }

    fn apply(&mut self, key: Key, active: bool, payload: Option<Rc<Value>>) {
        if let Some((_, cost)) = self.active.remove(&key) {
            self.bytes -= cost;
        }
        if !active {
            return;
        }
        let cost = ROW_BYTES
            + key.0.len()
            + key.2.len()
            + payload.as_ref().map_or(0, |p| p.to_string().len());
        if self.active.len() >= MAX_ACTIVE || self.bytes + cost > MAX_ACTIVE_BYTES {
            if self.unlisted == 0 {
                log::warn!(
                    "active subscriptions: past {MAX_ACTIVE} or {MAX_ACTIVE_BYTES} bytes listed; newer ones are not"
                );
            }
            self.unlisted += 1;
            return;
        }
        self.bytes += cost;
        self.active.insert(key, (payload, cost));
    }

    /// How many subscriptions are listed.
    #[cfg(test)]
    fn listed(&self) -> usize {
        self.active.len()
    }

    /// The subscriptions API's answer for `path` (raw, under [`PREFIX`]):
    /// `Ok(None)` is a 404, `Err` a 400's reason. `last_event_id` is the
    /// hub's newest id (`earliest` when none).
    pub fn api(&self, path: &str, last_event_id: &str) -> Result<Option<Value>, String> {
        let Some(rest) = path.strip_prefix(PREFIX) else {
            return Ok(None);
        };
        let segs: Vec<&str> = match rest {
            "" => Vec::new(),
            r => match r.strip_prefix('/') {
                Some(r) => r.split('/').collect(),
                None => return Ok(None),
            },
        };
        if segs.len() == 1 || segs.len() > 3 {
            return Ok(None);
        }
        let decoded: Vec<String> = segs
            .iter()
            .map(|s| crate::http::decode_path(s).map(|c| c.into_owned()))
            .collect::<Option<_>>()
            .ok_or("path segments must percent-decode to UTF-8")?;
        if let Some(t) = decoded.first() {
            if !TYPES.contains(&t.as_str()) {
                return Err(format!(
                    "unknown match type {t:?}: exact, urlpattern or {URI_TEMPLATE}"
                ));
            }
        }
        let is = |v: &str, i: usize| decoded.get(i).is_none_or(|d| d == v);
        let mut found = self
            .active
            .iter()
            .filter(|((who, t, m), _)| is(t, 0) && is(m, 1) && is(who, 2))
            .map(|((who, t, m), (p, _))| doc(t, m, who, true, p.as_deref()));
        if decoded.len() == 3 {
            let Some(d) = found.next() else {
                return Ok(None);
            };
            let mut d = with_context(d);
            if let Some(m) = d.as_object_mut() {
                m.insert("last_event_id".into(), last_event_id.into());
            }
            return Ok(Some(d));
        }
        let subs: Vec<Value> = found.collect();
        Ok(Some(json!({
            "@context": CONTEXT,
            "id": path,
            "type": "Subscriptions",
            "last_event_id": last_event_id,
            "subscriptions": subs,
        })))
    }
}

/// The JSON document of a `mercure` event's `data:` lines.
fn document(frame: &[u8]) -> Option<Value> {
    let text = std::str::from_utf8(frame).ok()?;
    let mut typed = false;
    let mut data = String::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            typed = v.trim_start() == EVENT;
        } else if let Some(v) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    if !typed {
        return None;
    }
    serde_json::from_str(&data).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> rand::rngs::SmallRng {
        rand::rngs::SmallRng::seed_from_u64(7)
    }

    fn sub(t: &'static str, m: &str) -> Sub {
        Sub {
            match_type: t,
            matcher: m.into(),
            payload: None,
        }
    }

    #[test]
    fn ids_are_v4_urns_and_topics_encode_once() {
        let id = uuid_urn(&mut rng());
        assert_eq!(id.len(), "urn:uuid:".len() + 36);
        let u = id.strip_prefix("urn:uuid:").unwrap();
        assert_eq!(&u[14..15], "4");
        assert!("89ab".contains(&u[19..20]), "{u}");
        assert_eq!(
            topic("urlpattern", "https://example.com/:selector", "urn:uuid:bb"),
            "/.well-known/mercure/subscriptions/urlpattern/https%3A%2F%2Fexample.com%2F%3Aselector/urn%3Auuid%3Abb"
        );
        // A `%` already there is encoded again: never decoded first.
        assert_eq!(encode("a%2Fb c~"), "a%252Fb%20c~");
    }

    #[test]
    fn local_updates_list_and_unlist() {
        let mut p = Presence::new(true);
        let mut j = Joined::new(
            &mut rng(),
            9,
            vec![
                sub("exact", "/a"),
                sub("exact", "/a"),
                sub("urlpattern", "/b/:x"),
            ],
            1024,
        );
        j.subs[0].payload = Some(Rc::new(json!({"k": 1})));
        let who = j.subscriber().to_string();
        p.join(ConnKey(3), Box::new(j));
        p.left(ConnKey(9), true);
        assert!(!p.has_pending());
        p.started(ConnKey(3), true);
        let ups = p.take_pending();
        assert_eq!(ups.len(), 2, "a repeat is announced once");
        let (t, data, peer) = (&ups[0].topic(), &ups[0].data(), &ups[0].peer);
        assert_eq!(*peer, 9);
        assert_eq!(*t, topic("exact", "/a", &who));
        let d: Value = serde_json::from_str(data).unwrap();
        assert_eq!(
            d,
            json!({"@context": CONTEXT, "id": t, "type": "Subscription", "match_type": "exact",
                   "match": "/a", "subscriber": who, "active": true, "payload": {"k": 1}})
        );
        let all = p.api(PREFIX, "7").unwrap().unwrap();
        assert_eq!(all["subscriptions"].as_array().unwrap().len(), 2);
        assert_eq!(all["last_event_id"], "7");
        let one = p.api(t, "7").unwrap().unwrap();
        assert_eq!(one["subscriber"], who.as_str());
        assert_eq!(one["last_event_id"], "7");
        let by_match = p
            .api(&format!("{PREFIX}/urlpattern/%2Fb%2F%3Ax"), "7")
            .unwrap()
            .unwrap();
        assert_eq!(by_match["subscriptions"][0]["match"], "/b/:x");
        assert_eq!(p.api(&format!("{PREFIX}/exact"), "7"), Ok(None));
        assert!(p.api(&format!("{PREFIX}/nope/x"), "7").is_err());
        p.left(ConnKey(3), true);
        let ends = p.take_pending();
        assert_eq!(ends.len(), 2);
        assert!(ends[0].data().contains("\"active\":false"));
        assert_eq!(p.listed(), 0);
        assert_eq!(p.bytes, 0);
        assert!(p.none_here());
    }

    #[test]
    fn bus_updates_list_only_the_hubs_own_documents() {
        let mut p = Presence::new(true);
        let j = Joined::new(&mut rng(), 9, vec![sub("exact", "/a")], 1024);
        p.join(ConnKey(1), Box::new(j));
        p.started(ConnKey(1), false);
        let ups = p.take_pending();
        assert_eq!(p.listed(), 0, "with a bus, listed when heard");
        let (t, data) = (&ups[0].topic(), &ups[0].data());
        let frame = format!("id: 5\nevent: mercure\ndata: {data}\n\n");
        let heard = p.heard([t.as_str()].into_iter(), frame.as_bytes());
        assert_eq!(heard.as_ref(), Some(t));
        assert_eq!(p.listed(), 1);
        p.left(ConnKey(1), false);
        let end = &p.take_pending()[0];
        let frame = format!("id: 6\nevent: mercure\ndata: {}\n\n", end.data());
        p.heard([t.as_str()].into_iter(), frame.as_bytes());
        assert_eq!(p.listed(), 0);
        // Not a `mercure` event, or a document naming another topic.
        let mut q = Presence::new(true);
        q.heard(
            [t.as_str()].into_iter(),
            format!("data: {data}\n\n").as_bytes(),
        );
        q.heard(
            ["/.well-known/mercure/subscriptions/exact/x/y"].into_iter(),
            frame.as_bytes(),
        );
        assert_eq!(q.listed(), 0);
        // Off: nothing is kept.
        let mut off = Presence::new(false);
        off.join(
            ConnKey(1),
            Box::new(Joined::new(&mut rng(), 9, vec![sub("exact", "/a")], 1024)),
        );
        off.heard([t.as_str()].into_iter(), frame.as_bytes());
        assert!(off.none_here() && off.listed() == 0);
        // Subscriptions whose topic would be too long are not announced.
        let j = Joined::new(&mut rng(), 9, vec![sub("exact", &"x".repeat(2000))], 1024);
        assert!(j.subs.is_empty());
    }
}
