//! Per-peer connection counts, for `--max-connections-per-ip`: one entry
//! per distinct address with open connections, freed with the last one.

use std::net::IpAddr;

use slab::Slab;

/// Per-peer connection counts.
#[derive(Default)]
pub struct Peers {
    slots: Slab<(IpAddr, u32)>,
    by_ip: std::collections::HashMap<IpAddr, u32>,
}

impl Peers {
    /// Counts a connection from `ip`; `None` when `limit` is reached.
    pub fn add(&mut self, ip: IpAddr, limit: usize) -> Option<u32> {
        if let Some(&slot) = self.by_ip.get(&ip) {
            let e = self.slots.get_mut(slot as usize)?;
            if e.1 as usize >= limit {
                return None;
            }
            e.1 += 1;
            return Some(slot);
        }
        if limit == 0 {
            return None;
        }
        let slot = self.slots.insert((ip, 1)) as u32;
        self.by_ip.insert(ip, slot);
        Some(slot)
    }
    /// Forgets one connection in `slot`.
    pub fn remove(&mut self, slot: u32) {
        if let Some(e) = self.slots.get_mut(slot as usize) {
            e.1 = e.1.saturating_sub(1);
            if e.1 == 0 {
                let ip = e.0;
                self.slots.remove(slot as usize);
                self.by_ip.remove(&ip);
            }
        }
    }
    /// The address in `slot`.
    pub fn ip(&self, slot: u32) -> Option<IpAddr> {
        self.slots.get(slot as usize).map(|e| e.0)
    }
    /// Distinct peers.
    pub fn len(&self) -> usize {
        self.slots.len()
    }
}
