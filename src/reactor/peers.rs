//! Per-peer state: connection counts, for `--max-connections-per-ip`, and
//! the bytes of unfinished requests each address holds, for its share of
//! the request-buffer budget. One entry per distinct address with open
//! connections, freed with the last one.
//!
//! Bookkeeping only: it does not decide limits' values (the reactor passes
//! them in) or charge the memory account (the reactor charges both).

use std::net::IpAddr;

use slab::Slab;

struct Peer {
    ip: IpAddr,
    conns: u32,
    /// Bytes of unfinished requests its connections hold.
    requests: usize,
}

/// Per-peer connection counts and request bytes.
#[derive(Default)]
pub struct Peers {
    slots: Slab<Peer>,
    by_ip: std::collections::HashMap<IpAddr, u32>,
}

impl Peers {
    /// Counts a connection from `ip`; `None` when `limit` is reached.
    pub fn add(&mut self, ip: IpAddr, limit: usize) -> Option<u32> {
        if let Some(&slot) = self.by_ip.get(&ip) {
            let e = self.slots.get_mut(slot as usize)?;
            if e.conns as usize >= limit {
                return None;
            }
            e.conns += 1;
            return Some(slot);
        }
        if limit == 0 {
            return None;
        }
        let slot = self.slots.insert(Peer {
            ip,
            conns: 1,
            requests: 0,
        }) as u32;
        self.by_ip.insert(ip, slot);
        Some(slot)
    }
    /// Forgets one connection in `slot`.
    pub fn remove(&mut self, slot: u32) {
        if let Some(e) = self.slots.get_mut(slot as usize) {
            e.conns = e.conns.saturating_sub(1);
            if e.conns == 0 {
                let ip = e.ip;
                self.slots.remove(slot as usize);
                self.by_ip.remove(&ip);
            }
        }
    }
    /// The address in `slot`.
    pub fn ip(&self, slot: u32) -> Option<IpAddr> {
        self.slots.get(slot as usize).map(|e| e.ip)
    }
    /// Distinct peers.
    pub fn len(&self) -> usize {
        self.slots.len()
    }
    /// Bytes of unfinished requests `slot` holds.
    pub fn requests(&self, slot: u32) -> usize {
        self.slots.get(slot as usize).map_or(0, |e| e.requests)
    }
    /// `slot` holds `bytes` more of unfinished requests.
    pub fn hold(&mut self, slot: u32, bytes: usize) {
        if let Some(e) = self.slots.get_mut(slot as usize) {
            e.requests = e.requests.saturating_add(bytes);
        }
    }
    /// `slot` let go of `bytes` of unfinished requests (never below zero).
    pub fn let_go(&mut self, slot: u32, bytes: usize) {
        if let Some(e) = self.slots.get_mut(slot as usize) {
            e.requests = e.requests.saturating_sub(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_connections_and_request_bytes_per_address() {
        let mut p = Peers::default();
        let a: IpAddr = [10, 0, 0, 1].into();
        let s = p.add(a, 2).unwrap();
        assert_eq!(p.add(a, 2), Some(s));
        assert_eq!(p.add(a, 2), None);
        let t = p.add([10, 0, 0, 2].into(), 2).unwrap();
        p.hold(s, 100);
        p.hold(s, 50);
        p.let_go(s, 30);
        assert_eq!((p.requests(s), p.requests(t)), (120, 0));
        p.let_go(s, 500);
        assert_eq!(p.requests(s), 0);
        p.remove(s);
        p.remove(s);
        assert_eq!((p.ip(s), p.len()), (None, 1));
        assert_eq!(p.requests(s), 0);
    }
}
