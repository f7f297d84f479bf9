//! Routes datagrams from the one UDP socket to their peer.
//!
//! ICE-lite: every peer's first packets are STUN binding requests whose
//! USERNAME is `<our ufrag>:<their ufrag>`; we pick the peer by our ufrag
//! (we choose it, so it is unique) and remember the source address. All
//! later DTLS/SRTP/RTCP packets are routed by source address. Both lookups
//! are hash maps: no scan over peers.

use std::collections::HashMap;
use std::net::SocketAddr;

pub type PeerId = u64;

const STUN_MAGIC: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const ATTR_USERNAME: u16 = 0x0006;

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

#[derive(Debug, Default)]
pub struct Router {
    by_ufrag: HashMap<String, PeerId>,
    by_addr: HashMap<SocketAddr, PeerId>,
    addrs_of: HashMap<PeerId, Vec<SocketAddr>>,
}

impl Router {
    pub fn add_peer(&mut self, peer: PeerId, local_ufrag: &str) {
        self.by_ufrag.insert(local_ufrag.to_owned(), peer);
    }

    pub fn remove_peer(&mut self, peer: PeerId, local_ufrag: &str) {
        if self.by_ufrag.get(local_ufrag) == Some(&peer) {
            self.by_ufrag.remove(local_ufrag);
        }
        for addr in self.addrs_of.remove(&peer).unwrap_or_default() {
            if self.by_addr.get(&addr) == Some(&peer) {
                self.by_addr.remove(&addr);
            }
        }
    }

    /// The peer a datagram from `source` belongs to.
    pub fn route(&mut self, source: SocketAddr, data: &[u8]) -> Option<PeerId> {
        if let Some(ufrag) = stun_local_ufrag(data) {
            let peer = *self.by_ufrag.get(ufrag)?;
            if self.by_addr.insert(source, peer) != Some(peer) {
                self.addrs_of.entry(peer).or_default().push(source);
            }
            return Some(peer);
        }
        self.by_addr.get(&source).copied()
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

    fn stun(username: &str) -> Vec<u8> {
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
    fn stun_then_address_routing() {
        let mut r = Router::default();
        r.add_peer(1, "aaaa");
        r.add_peer(2, "bbbb");
        let a: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:6000".parse().expect("addr");
        assert_eq!(
            r.route(a, &[0x16, 0xfe, 0xfd]),
            None,
            "DTLS before STUN is unroutable"
        );
        assert_eq!(r.route(a, &stun("aaaa:xyz")), Some(1));
        assert_eq!(r.route(b, &stun("bbbb:q")), Some(2));
        assert_eq!(r.route(a, &[0x16, 0xfe, 0xfd]), Some(1));
        assert_eq!(r.route(b, &[0x80, 0x60]), Some(2));
        assert_eq!(r.route(a, &stun("cccc:z")), None);
        r.remove_peer(1, "aaaa");
        assert_eq!(r.route(a, &[0x80]), None);
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
