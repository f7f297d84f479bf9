//! Routes datagrams from the one UDP socket to their peer.
//!
//! ICE-lite: every peer's first packets are STUN binding requests whose
//! USERNAME is `<our ufrag>:<their ufrag>`; we pick the peer by our ufrag
//! (we choose it, so it is unique) and, once the request's
//! MESSAGE-INTEGRITY verifies with the peer's ICE password, remember the
//! source address. All later DTLS/SRTP/RTCP packets are routed by source
//! address. Both lookups are hash maps: no scan over peers.
//!
//! Why check integrity here when str0m checks it too: the address map is
//! ours. Without the check anyone who learnt a ufrag (it travels in the
//! clear in the SDP) could bind addresses to a peer, and a flood of forged
//! requests from many source addresses would grow the map. A peer keeps
//! at most [`MAX_ADDRESSES_PER_PEER`] addresses (ICE checks from each of
//! the publisher's candidates), the oldest forgotten first.

use std::collections::HashMap;
use std::net::SocketAddr;

pub type PeerId = u64;

/// Source addresses a peer is reachable from, at most.
pub const MAX_ADDRESSES_PER_PEER: usize = 8;

const STUN_MAGIC: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const ATTR_USERNAME: u16 = 0x0006;
const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;

/// Our ufrag from a STUN message's USERNAME, if `data` is STUN and has one.
pub fn stun_local_ufrag(data: &[u8]) -> Option<&str> {
    if data.len() < 20 || data[0] & 0xc0 != 0 || data[4..8] != STUN_MAGIC {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([data[2], data[3]]));
    let body = data.get(20..20 + len)?;
    let mut i = 0;
    while i + 4 <= body.len() {
        let ty = u16::from_be_bytes([body[i], body[i + 1]]);
        let alen = usize::from(u16::from_be_bytes([body[i + 2], body[i + 3]]));
        let value = body.get(i + 4..i + 4 + alen)?;
        if ty == ATTR_USERNAME {
            let text = std::str::from_utf8(value).ok()?;
            return Some(text.split(':').next().unwrap_or(text));
        }
        i += 4 + alen.div_ceil(4) * 4;
    }
    None
}

/// Whether STUN message `data` carries a MESSAGE-INTEGRITY attribute that
/// verifies with the short-term credential `password` (RFC 8489 §14.5:
/// HMAC-SHA1 over the message up to the attribute, with the header's
/// length counting up to the attribute's end).
pub fn stun_integrity_ok(data: &[u8], password: &[u8]) -> bool {
    if data.len() < 20 || data[4..8] != STUN_MAGIC {
        return false;
    }
    let len = usize::from(u16::from_be_bytes([data[2], data[3]]));
    let Some(body) = data.get(20..20 + len) else {
        return false;
    };
    let mut i = 0;
    while i + 4 <= body.len() {
        let ty = u16::from_be_bytes([body[i], body[i + 1]]);
        let alen = usize::from(u16::from_be_bytes([body[i + 2], body[i + 3]]));
        let Some(value) = body.get(i + 4..i + 4 + alen) else {
            return false;
        };
        if ty == ATTR_MESSAGE_INTEGRITY {
            if alen != 20 {
                return false;
            }
            let mut covered = data[..20 + i].to_vec();
            let Ok(counted) = u16::try_from(i + 24) else {
                return false;
            };
            covered[2..4].copy_from_slice(&counted.to_be_bytes());
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, password);
            return ring::hmac::verify(&key, &covered, value).is_ok();
        }
        i += 4 + alen.div_ceil(4) * 4;
    }
    false
}

#[derive(Debug, Default)]
pub struct Router {
    by_ufrag: HashMap<String, (PeerId, String)>,
    /// Source address → its peer, and when it last carried a datagram.
    by_addr: HashMap<SocketAddr, (PeerId, u64)>,
    addrs_of: HashMap<PeerId, Vec<SocketAddr>>,
    /// Datagrams routed so far: the clock of `by_addr`'s last use.
    routed: u64,
}

/// Why a datagram went to no peer (for metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unrouted {
    /// No peer has this ufrag, or no peer has this source address.
    Unknown,
    /// A STUN request naming a peer whose integrity did not verify.
    Forged,
}

impl Router {
    /// `local_pass` is the peer's ICE password: it keys the integrity
    /// check of the requests that bind an address to the peer.
    pub fn add_peer(&mut self, peer: PeerId, local_ufrag: &str, local_pass: &str) {
        self.by_ufrag
            .insert(local_ufrag.to_owned(), (peer, local_pass.to_owned()));
    }

    pub fn remove_peer(&mut self, peer: PeerId, local_ufrag: &str) {
        if self.by_ufrag.get(local_ufrag).map(|p| p.0) == Some(peer) {
            self.by_ufrag.remove(local_ufrag);
        }
        for addr in self.addrs_of.remove(&peer).unwrap_or_default() {
            if self.by_addr.get(&addr).map(|a| a.0) == Some(peer) {
                self.by_addr.remove(&addr);
            }
        }
    }

    /// The peer a datagram from `source` belongs to.
    pub fn route(&mut self, source: SocketAddr, data: &[u8]) -> Result<PeerId, Unrouted> {
        self.routed = self.routed.wrapping_add(1);
        let now = self.routed;
        if let Some(ufrag) = stun_local_ufrag(data) {
            let (peer, pass) = self.by_ufrag.get(ufrag).ok_or(Unrouted::Unknown)?;
            let peer = *peer;
            if !stun_integrity_ok(data, pass.as_bytes()) {
                return Err(Unrouted::Forged);
            }
            let previous = self.by_addr.insert(source, (peer, now)).map(|a| a.0);
            if previous != Some(peer) {
                if let Some(other) = previous {
                    if let Some(list) = self.addrs_of.get_mut(&other) {
                        list.retain(|a| *a != source);
                    }
                }
                let list = self.addrs_of.entry(peer).or_default();
                list.push(source);
                if list.len() > MAX_ADDRESSES_PER_PEER {
                    // The address idle the longest goes (not the oldest):
                    // requests replayed from other addresses (their
                    // integrity holds) cannot push out the one the media
                    // comes from.
                    let by_addr = &self.by_addr;
                    let idlest = list
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, a)| by_addr.get(*a).map_or(0, |e| e.1))
                        .map(|(i, _)| i)
                        .unwrap_or(0);
                    let gone = list.remove(idlest);
                    if self.by_addr.get(&gone).map(|a| a.0) == Some(peer) {
                        self.by_addr.remove(&gone);
                    }
                }
            }
            return Ok(peer);
        }
        match self.by_addr.get_mut(&source) {
            Some(entry) => {
                entry.1 = now;
                Ok(entry.0)
            }
            None => Err(Unrouted::Unknown),
        }
    }

    pub fn peers(&self) -> usize {
        self.by_ufrag.len()
    }

    pub fn addresses(&self) -> usize {
        self.by_addr.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASS: &str = "local-password-0123456789abcdef";

    /// A binding request with USERNAME "aaaa:remote", PRIORITY,
    /// ICE-CONTROLLING, USE-CANDIDATE, MESSAGE-INTEGRITY keyed with PASS and
    /// FINGERPRINT, as aioice (aiortc's ICE agent) builds it.
    const AIOICE_REQUEST: &str = "000100482112a442000102030405060708090a0b0006000b616161613a72656d6f746500002400046e7f1eff802a000811223344556677880025000000080014a4065df106e3703f2e44de40a59f88647b1328ae80280004ba0cfc5f";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// A request for `username` signed with PASS (the router's own check
    /// is validated against aioice's request below).
    fn stun(username: &str) -> Vec<u8> {
        let mut m = unsigned_stun(username);
        let at = m.len();
        let len = u16::try_from(at - 20 + 24).expect("short");
        m[2..4].copy_from_slice(&len.to_be_bytes());
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, PASS.as_bytes());
        let tag = ring::hmac::sign(&key, &m);
        m.extend_from_slice(&ATTR_MESSAGE_INTEGRITY.to_be_bytes());
        m.extend_from_slice(&20u16.to_be_bytes());
        m.extend_from_slice(tag.as_ref());
        m
    }

    fn unsigned_stun(username: &str) -> Vec<u8> {
        let mut attr = Vec::new();
        attr.extend_from_slice(&0x8022u16.to_be_bytes()); // SOFTWARE, to be skipped
        attr.extend_from_slice(&3u16.to_be_bytes());
        attr.extend_from_slice(b"abc\0");
        attr.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
        attr.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attr.extend_from_slice(username.as_bytes());
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attr.len() as u16).to_be_bytes());
        m.extend_from_slice(&STUN_MAGIC);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attr);
        m
    }

    #[test]
    fn integrity_is_checked_as_aioice_signs_it() {
        let m = unhex(AIOICE_REQUEST);
        assert_eq!(stun_local_ufrag(&m), Some("aaaa"));
        assert!(stun_integrity_ok(&m, PASS.as_bytes()));
        assert!(!stun_integrity_ok(&m, b"another-password"));
        let mut tampered = m.clone();
        tampered[40] ^= 1; // inside PRIORITY
        assert!(!stun_integrity_ok(&tampered, PASS.as_bytes()));
        assert!(!stun_integrity_ok(
            &unsigned_stun("aaaa:x"),
            PASS.as_bytes()
        ));
    }

    #[test]
    fn forged_requests_bind_no_address() {
        let mut r = Router::default();
        r.add_peer(1, "aaaa", PASS);
        let attacker: SocketAddr = "192.0.2.9:4000".parse().expect("addr");
        assert_eq!(
            r.route(attacker, &unsigned_stun("aaaa:x")),
            Err(Unrouted::Forged)
        );
        assert_eq!(
            r.route(attacker, &[0x16, 0xfe, 0xfd]),
            Err(Unrouted::Unknown)
        );
        assert_eq!(r.addresses(), 0);
        // The media comes from one address; then (validly signed) requests
        // replayed from 20 others: the peer keeps 8 addresses, the one that
        // carries media among them.
        let media = SocketAddr::from(([192, 0, 2, 1], 4999));
        assert_eq!(r.route(media, &stun("aaaa:x")), Ok(1));
        for port in 0..20u16 {
            let a = SocketAddr::from(([192, 0, 2, 1], 5000 + port));
            assert_eq!(r.route(a, &stun("aaaa:x")), Ok(1));
            assert_eq!(r.route(media, &[0x80]), Ok(1), "media after replay {port}");
        }
        assert_eq!(r.addresses(), MAX_ADDRESSES_PER_PEER);
        let newest = SocketAddr::from(([192, 0, 2, 1], 5019));
        assert_eq!(r.route(newest, &[0x80]), Ok(1));
        let oldest = SocketAddr::from(([192, 0, 2, 1], 5000));
        assert_eq!(r.route(oldest, &[0x80]), Err(Unrouted::Unknown));
    }

    #[test]
    fn stun_then_address_routing() {
        let mut r = Router::default();
        r.add_peer(1, "aaaa", PASS);
        r.add_peer(2, "bbbb", PASS);
        let a: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:6000".parse().expect("addr");
        assert_eq!(
            r.route(a, &[0x16, 0xfe, 0xfd]),
            Err(Unrouted::Unknown),
            "DTLS before STUN is unroutable"
        );
        assert_eq!(r.route(a, &stun("aaaa:xyz")), Ok(1));
        assert_eq!(r.route(b, &stun("bbbb:q")), Ok(2));
        assert_eq!(r.route(a, &[0x16, 0xfe, 0xfd]), Ok(1));
        assert_eq!(r.route(b, &[0x80, 0x60]), Ok(2));
        assert_eq!(r.route(a, &stun("cccc:z")), Err(Unrouted::Unknown));
        r.remove_peer(1, "aaaa");
        assert_eq!(r.route(a, &[0x80]), Err(Unrouted::Unknown));
        assert_eq!((r.peers(), r.addresses()), (1, 1));
    }

    #[test]
    fn malformed_stun_is_not_a_panic() {
        assert_eq!(
            stun_local_ufrag(&[0, 1, 0, 200, 0x21, 0x12, 0xa4, 0x42]),
            None
        );
        let mut m = stun("aaaa:b");
        m.truncate(26);
        assert_eq!(stun_local_ufrag(&m), None);
        let mut bad_len = stun("aaaa:b");
        bad_len[22] = 0xff;
        assert_eq!(stun_local_ufrag(&bad_len), None);
    }
}
