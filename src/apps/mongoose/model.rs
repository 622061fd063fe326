//! The MongooseIM app's state: users (from `--users`), their contacts
//! (RFC 6121 subscription states), MUC Light rooms and their members, the
//! message archives' items, and the mutations that keep them consistent
//! (invitations, ownership, archiving within the archives' share of the
//! history budget). Pure data: it never parses requests, answers them or
//! decides publishes; the handlers (`messages`, `contacts`, `rooms`) do.

use std::collections::{BTreeMap, HashMap};
#[cfg(test)]
use std::path::Path;
use std::rc::Rc;

use super::archive::{Archive, Fifo, Ledger, Owner};
#[cfg(test)]
use super::users::load_users;
use super::users::Users;
use super::MAX_CONTACTS;
use crate::access;
use crate::http::Request;

/// An item for an archive.
pub(super) enum Archived {
    Chat(Rc<Chat>),
    Room(Rc<RoomItem>),
}

/// A one-to-one message.
pub(super) struct Chat {
    pub(super) id: String,
    pub(super) from: Box<str>,
    pub(super) to: Box<str>,
    pub(super) body: Box<str>,
    pub(super) ts_us: u64,
}

/// XEP-0333 chat marker types MongooseIM accepts.
pub(super) const MARKER_TYPES: [&str; 3] = ["received", "displayed", "acknowledged"];

/// What happened in a room.
pub(super) enum RoomKind {
    Message {
        from: Box<str>,
        body: Option<Box<str>>,
        /// (type, id of the marked message); `type` is one of [`MARKER_TYPES`].
        marker: Option<(&'static str, Box<str>)>,
        markable: bool,
    },
    Affiliation {
        user: Box<str>,
        affiliation: &'static str,
    },
}

pub(super) struct RoomItem {
    pub(super) id: String,
    pub(super) ts_us: u64,
    pub(super) kind: RoomKind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Owner,
    Member,
}

impl Role {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Member => "member",
        }
    }
}

pub(super) struct Room {
    /// `muclight.<creator's domain>`.
    pub(super) domain: Box<str>,
    pub(super) name: Box<str>,
    pub(super) subject: Box<str>,
    /// In joining order: the first member after the owner inherits
    /// ownership when the owner leaves (MUC Light does the same).
    pub(super) members: Vec<(Box<str>, Role)>,
    pub(super) archive: Archive<RoomItem>,
    /// Who created it: the room counts against that user's quota
    /// ([`MAX_ROOMS_PER_USER`]) until it is deleted.
    pub(super) creator: Box<str>,
}

impl Room {
    pub(super) fn role(&self, jid: &str) -> Option<Role> {
        self.members
            .iter()
            .find(|(u, _)| &**u == jid)
            .map(|(_, r)| *r)
    }
}

/// RFC 6121 subscription state of one roster item.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Sub {
    None,
    To,
    From,
    Both,
}

impl Sub {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Sub::None => "none",
            Sub::To => "to",
            Sub::From => "from",
            Sub::Both => "both",
        }
    }
    /// Whether we receive the contact's presence.
    pub(super) fn has_to(self) -> bool {
        matches!(self, Sub::To | Sub::Both)
    }
    /// Whether the contact receives ours.
    pub(super) fn has_from(self) -> bool {
        matches!(self, Sub::From | Sub::Both)
    }
    pub(super) fn with_to(self) -> Sub {
        if self.has_from() {
            Sub::Both
        } else {
            Sub::To
        }
    }
    pub(super) fn with_from(self) -> Sub {
        if self.has_to() {
            Sub::Both
        } else {
            Sub::From
        }
    }
}

/// One roster item.
#[derive(Clone, Copy, Debug)]
pub(super) struct Contact {
    pub(super) sub: Sub,
    /// We asked for the contact's presence and wait for approval.
    pub(super) pending_out: bool,
    /// The contact asked for ours.
    pub(super) pending_in: bool,
}

impl Contact {
    pub(super) const NEW: Contact = Contact {
        sub: Sub::None,
        pending_out: false,
        pending_in: false,
    };
    /// MongooseIM's `ask`.
    pub(super) fn ask(&self) -> &'static str {
        match (self.pending_out, self.pending_in) {
            (false, false) => "none",
            (true, false) => "out",
            (false, true) => "in",
            (true, true) => "both",
        }
    }
}

pub(super) struct User {
    pub(super) password: Box<str>,
    pub(super) archive: Archive<Chat>,
    /// Rooms this user created that still exist.
    pub(super) rooms: usize,
    /// Sorted by JID, so listings are stable.
    pub(super) contacts: BTreeMap<Box<str>, Contact>,
}

/// State of the MongooseIM app.
#[derive(Default)]
pub struct Mongoose {
    pub(super) users: HashMap<Box<str>, User>,
    pub(super) rooms: HashMap<Box<str>, Room>,
    /// The last room id's timestamp, so ids stay unique within a µs.
    pub(super) last_room_us: u64,
    /// Every archive's bytes and the order to drop them in.
    pub(super) ledger: Ledger,
}

/// A bare JID `local@domain`, lowercased; `None` if it is not one.
pub fn bare_jid(s: &str) -> Option<String> {
    let (local, domain) = s.split_once('@')?;
    let ok_part = |p: &str| {
        !p.is_empty()
            && p.len() <= 255
            && p.chars().all(|c| {
                !c.is_whitespace()
                    && !c.is_control()
                    && !matches!(c, '@' | '/' | '"' | '&' | '\'' | ':' | '<' | '>')
            })
    };
    (ok_part(local) && ok_part(domain)).then(|| s.to_lowercase())
}

impl Mongoose {
    /// Loads users from `file` (none without one: every request is 401).
    #[cfg(test)]
    /// A file that cannot be used is logged and leaves no users; callers
    /// that must refuse to start use [`load_users`] and [`Mongoose::from_users`].
    pub fn new(file: Option<&Path>) -> Mongoose {
        match file.map(load_users) {
            None => Mongoose::default(),
            Some(Ok(users)) => Mongoose::from_users(users),
            Some(Err(e)) => {
                log::error!("{e}; /api will refuse everyone");
                Mongoose::default()
            }
        }
    }

    /// The app serving `users`.
    pub fn from_users(users: Users) -> Mongoose {
        let users = users
            .entries
            .into_iter()
            .map(|(jid, password)| {
                let user = User {
                    password,
                    archive: Archive::default(),
                    rooms: 0,
                    contacts: BTreeMap::new(),
                };
                (jid, user)
            })
            .collect();
        Mongoose {
            users,
            ..Mongoose::default()
        }
    }

    /// Number of users loaded.
    #[cfg(test)]
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// The user a request authenticates as, from `Authorization: Basic`
    /// (the access rule's [`access::basic_user`]).
    pub(super) fn authenticate(&self, req: &Request<'_>) -> Result<String, &'static str> {
        access::basic_user(req, bare_jid, |jid| {
            self.users.get(jid).map(|u| &*u.password)
        })
    }

    pub(super) fn fifo(&mut self, owner: &Owner) -> Option<&mut dyn Fifo> {
        match owner {
            Owner::User(j) => self
                .users
                .get_mut(j)
                .map(|u| &mut u.archive as &mut dyn Fifo),
            Owner::Room(r) => self
                .rooms
                .get_mut(r)
                .map(|r| &mut r.archive as &mut dyn Fifo),
        }
    }

    /// Archives an item for `owner`, then keeps every archive together
    /// within `share` bytes by dropping the oldest items of any archive
    /// (never the one just added).
    pub(super) fn archive(&mut self, owner: Owner, item: Archived, size: usize, share: usize) {
        let seq = self.ledger.next;
        self.ledger.next += 1;
        let (old, freed, new) = match (&owner, item) {
            (Owner::User(j), Archived::Chat(c)) => {
                let Some(u) = self.users.get_mut(j) else {
                    return;
                };
                let old = u.archive.front_seq();
                let freed = u.archive.push(seq, c, size);
                (old, freed, u.archive.front_seq())
            }
            (Owner::Room(r), Archived::Room(i)) => {
                let Some(room) = self.rooms.get_mut(r) else {
                    return;
                };
                let old = room.archive.front_seq();
                let freed = room.archive.push(seq, i, size);
                (old, freed, room.archive.front_seq())
            }
            _ => return,
        };
        self.ledger.bytes = self.ledger.bytes + size - freed;
        self.ledger.refront(&owner, old, new);
        while self.ledger.bytes > share {
            let Some((&front, who)) = self.ledger.fronts.first_key_value() else {
                break;
            };
            if front == seq {
                break;
            }
            let who = who.clone();
            self.ledger.fronts.remove(&front);
            let Some(a) = self.fifo(&who) else { continue };
            let freed = a.pop_front();
            let next = a.front_seq();
            self.ledger.bytes -= freed;
            if let Some(n) = next {
                self.ledger.fronts.insert(n, who);
            }
        }
    }

    /// Forgets a deleted room's archive.
    pub(super) fn drop_room(&mut self, id: &str) {
        if let Some(room) = self.rooms.remove(id) {
            self.ledger.bytes -= room.archive.held();
            if let Some(f) = room.archive.front_seq() {
                self.ledger.fronts.remove(&f);
            }
            if let Some(u) = self.users.get_mut(&*room.creator) {
                u.rooms = u.rooms.saturating_sub(1);
            }
        }
    }

    /// A fresh room id in MUC Light's style (`1483-609513-293487`: the
    /// creation time in µs, split), unique within this server.
    pub(super) fn new_room_id(&mut self, now_us: u64) -> String {
        let us = now_us.max(self.last_room_us + 1);
        self.last_room_us = us;
        format!(
            "{}-{:06}-{:06}",
            us / 1_000_000_000_000,
            (us / 1_000_000) % 1_000_000,
            us % 1_000_000
        )
    }

    /// `owner`'s item for `contact`; created when `create` and there is
    /// room for it.
    pub(super) fn contact_mut(
        &mut self,
        owner: &str,
        contact: &str,
        create: bool,
    ) -> Option<&mut Contact> {
        let user = self.users.get_mut(owner)?;
        if create && !user.contacts.contains_key(contact) && user.contacts.len() < MAX_CONTACTS {
            user.contacts.insert(contact.into(), Contact::NEW);
        }
        user.contacts.get_mut(contact)
    }

    /// `me` asks for `contact`'s presence (an outbound `subscribe`).
    pub(super) fn invite(&mut self, me: &str, contact: &str) {
        if let Some(c) = self.contact_mut(me, contact, false) {
            if !c.sub.has_to() {
                c.pending_out = true;
            }
        }
        // The inbound side; a full list drops the request (module doc).
        if let Some(c) = self.contact_mut(contact, me, true) {
            if !c.sub.has_from() {
                c.pending_in = true;
            }
        }
    }

    /// `me` approves `contact`'s pending request (an outbound `subscribed`);
    /// without one there is nothing to approve (RFC 6121 §3.1.4).
    pub(super) fn accept(&mut self, me: &str, contact: &str) {
        match self.contact_mut(me, contact, false) {
            Some(c) if c.pending_in => {
                c.pending_in = false;
                c.sub = c.sub.with_from();
            }
            _ => return,
        }
        if let Some(c) = self.contact_mut(contact, me, false) {
            if c.pending_out {
                c.pending_out = false;
                c.sub = c.sub.with_to();
            }
        }
    }

    /// Removes `contact` from `me`'s list, cancelling both subscriptions
    /// (RFC 6121 §2.5.3); `false` if it was not there.
    pub(super) fn remove_contact(&mut self, me: &str, contact: &str) -> bool {
        let removed = self
            .users
            .get_mut(me)
            .is_some_and(|u| u.contacts.remove(contact).is_some());
        if removed {
            if let Some(c) = self.contact_mut(contact, me, false) {
                *c = Contact::NEW;
            }
        }
        removed
    }
}

impl Mongoose {
    /// What the archives hold (charged to the history budget by the
    /// reactor after each request: `Broker::set_app_bytes`).
    pub fn archived_bytes(&self) -> usize {
        self.ledger.bytes
    }

    /// A chat message was delivered: archive it for its sender and (if
    /// another user) its recipient, within the archives' `share` of the
    /// history budget; returns what the archives now hold.
    pub fn archive_chat(&mut self, c: &crate::handler::Chat, share: usize) -> usize {
        let size = c.body.len() + c.to.len() + c.from.len() + 96;
        let msg = Rc::new(Chat {
            id: c.id.clone(),
            from: c.from.as_str().into(),
            to: c.to.as_str().into(),
            body: c.body.as_str().into(),
            ts_us: c.ts_us,
        });
        let me = Owner::User(c.from.as_str().into());
        self.archive(me, Archived::Chat(msg.clone()), size, share);
        if c.to != c.from {
            let them = Owner::User(c.to.as_str().into());
            self.archive(them, Archived::Chat(msg), size, share);
        }
        self.ledger.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apps::mongoose::users::parsed;
    use crate::apps::mongoose::MAX_CONTACTS;

    #[test]
    fn jids() {
        assert_eq!(
            bare_jid("Alice@Wonderland.lit").as_deref(),
            Some("alice@wonderland.lit")
        );
        assert_eq!(bare_jid("alice@wonderland.lit/res"), None);
        assert_eq!(bare_jid("@x"), None);
        assert_eq!(bare_jid("a@"), None);
        assert_eq!(bare_jid("a@b@c"), None);
        assert_eq!(bare_jid("a b@c"), None);
    }

    #[test]
    fn contact_states_follow_rfc_6121() {
        let mut m = Mongoose::from_users(parsed("a@x:1\nb@x:2\n"));
        let item = |m: &Mongoose, o: &str, c: &str| {
            m.users[o]
                .contacts
                .get(c)
                .map(|c| (c.sub.as_str(), c.ask()))
        };
        m.users
            .get_mut("a@x")
            .unwrap()
            .contacts
            .insert("b@x".into(), Contact::NEW);
        m.invite("a@x", "b@x");
        assert_eq!(item(&m, "a@x", "b@x"), Some(("none", "out")));
        assert_eq!(item(&m, "b@x", "a@x"), Some(("none", "in")));
        m.accept("b@x", "a@x");
        assert_eq!(item(&m, "a@x", "b@x"), Some(("to", "none")));
        assert_eq!(item(&m, "b@x", "a@x"), Some(("from", "none")));
        // Accepting with nothing pending changes nothing.
        m.accept("b@x", "a@x");
        assert_eq!(item(&m, "b@x", "a@x"), Some(("from", "none")));
        m.invite("b@x", "a@x");
        m.accept("a@x", "b@x");
        assert_eq!(item(&m, "a@x", "b@x"), Some(("both", "none")));
        assert_eq!(item(&m, "b@x", "a@x"), Some(("both", "none")));
        assert!(m.remove_contact("a@x", "b@x"));
        assert!(!m.remove_contact("a@x", "b@x"));
        assert_eq!(item(&m, "a@x", "b@x"), None);
        assert_eq!(item(&m, "b@x", "a@x"), Some(("none", "none")));
    }

    #[test]
    fn contacts_are_bounded() {
        let mut m = Mongoose::from_users(parsed("a@x:1\nb@x:2\n"));
        let a = m.users.get_mut("a@x").unwrap();
        for i in 0..MAX_CONTACTS {
            a.contacts.insert(format!("c{i}@x").into(), Contact::NEW);
        }
        m.users
            .get_mut("b@x")
            .unwrap()
            .contacts
            .insert("a@x".into(), Contact::NEW);
        // b invites a, whose list is full: b still asks, a records nothing.
        m.invite("b@x", "a@x");
        assert_eq!(m.users["a@x"].contacts.len(), MAX_CONTACTS);
        assert_eq!(m.users["b@x"].contacts["a@x"].ask(), "out");
    }

    #[test]
    fn room_ids_are_unique_and_shaped() {
        let mut m = Mongoose::default();
        let a = m.new_room_id(1_483_609_513_293_487);
        let b = m.new_room_id(1_483_609_513_293_487);
        assert_eq!(a, "1483-609513-293487");
        assert_eq!(b, "1483-609513-293488");
    }

    #[test]
    fn archives_share_one_bound_oldest_first() {
        let mut m = Mongoose::from_users(parsed("a@x:1\nb@x:2\n"));
        let chat = |n: &str| {
            Archived::Chat(Rc::new(Chat {
                id: n.into(),
                from: "a@x".into(),
                to: "b@x".into(),
                body: "".into(),
                ts_us: 0,
            }))
        };
        let user = |j: &str| Owner::User(j.into());
        m.archive(user("a@x"), chat("1"), 100, 250);
        m.archive(user("b@x"), chat("2"), 100, 250);
        assert_eq!(m.ledger.bytes, 200);
        // A third item goes over 250: the oldest of any archive (a's) goes.
        m.archive(user("b@x"), chat("3"), 100, 250);
        assert_eq!(m.ledger.bytes, 200);
        assert_eq!(m.users["a@x"].archive.items.len(), 0);
        let ids: Vec<&str> = m.users["b@x"].archive.iter().map(|c| &*c.id).collect();
        assert_eq!(ids, ["2", "3"]);
        // One item larger than the share is kept alone (never the new one).
        m.archive(user("a@x"), chat("4"), 1000, 250);
        assert_eq!(m.ledger.bytes, 1000);
        assert_eq!(m.users["b@x"].archive.items.len(), 0);
        assert_eq!(m.ledger.fronts.len(), 1);
    }
}
