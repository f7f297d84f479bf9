//! Binding an accepted TC3 signature to the action it was accepted for
//! (docs/security.md, "Replay").
//!
//! Tencent's SDKs sign only `content-type;host` and the body: `X-TC-Action`
//! is outside the signature, so a signed Describe captured on the wire
//! could be sent again within the 5-minute skew window as a Delete of the
//! same task (the two bodies are the same `{SdkAppId, TaskId}`). This
//! table remembers each accepted signature with its action and client
//! address until the signature expires, and refuses it under another
//! action from another address.
//!
//! The same address may use one signature for two actions: a client that
//! Describes and then Deletes a task within one second signs both
//! identically (same body, same timestamp), and nothing in the request
//! tells that apart from a replay by someone behind the same address.
//! Byte-identical repeats of the same action (the SDK sends identical
//! Describes within a second) are never refused. TLS is what keeps a
//! signature from being captured in the first place.
//!
//! Sans-IO: the caller passes the time. Memory is bounded: at most
//! [`MAX_REMEMBERED`] signatures, the oldest forgotten first (only
//! correctly signed requests get here, at the API's rate limit).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use super::Action;

/// Signatures remembered at most (5 minutes at over 300 requests/s).
pub const MAX_REMEMBERED: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Binding {
    action: Action,
    client: IpAddr,
    /// Unix seconds after which the signature no longer verifies.
    valid_until: i64,
}

/// A signature already accepted for another action, from another address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "this signature was already used for {first} from another address: a signed request replayed for another action is refused (sign each request anew)"
)]
pub struct Replayed {
    pub first: &'static str,
}

#[derive(Debug, Default)]
pub struct SignatureBindings {
    bound: HashMap<String, Binding>,
    /// Signatures in the order they were first accepted.
    order: VecDeque<String>,
}

impl SignatureBindings {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.bound.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bound.is_empty()
    }

    /// Admits a correctly signed request; `valid_until` is the last Unix
    /// second its signature verifies (its timestamp plus the allowed skew).
    pub fn admit(
        &mut self,
        signature: &str,
        action: Action,
        client: IpAddr,
        valid_until: i64,
        now: i64,
    ) -> Result<(), Replayed> {
        self.forget_expired(now);
        if let Some(b) = self.bound.get(signature) {
            if b.action != action && b.client != client {
                return Err(Replayed {
                    first: b.action.name(),
                });
            }
            return Ok(());
        }
        while self.bound.len() >= MAX_REMEMBERED {
            match self.order.pop_front() {
                Some(old) => {
                    self.bound.remove(&old);
                }
                None => break,
            }
        }
        self.bound.insert(
            signature.to_owned(),
            Binding {
                action,
                client,
                valid_until,
            },
        );
        self.order.push_back(signature.to_owned());
        Ok(())
    }

    /// Drops the signatures that expired. Signatures are first accepted in
    /// roughly timestamp order, so the front of `order` expires first; a
    /// stray younger one at the front only delays the rest until it goes.
    fn forget_expired(&mut self, now: i64) {
        while let Some(front) = self.order.front() {
            match self.bound.get(front) {
                Some(b) if b.valid_until >= now => break,
                _ => {
                    if let Some(old) = self.order.pop_front() {
                        self.bound.remove(&old);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn a_signature_is_refused_for_another_action_from_another_address() {
        let mut t = SignatureBindings::new();
        t.admit("sig", Action::Describe, ip(1), NOW + 300, NOW)
            .expect("first use");
        // Identical repeats are fine (the SDK sends identical Describes).
        t.admit("sig", Action::Describe, ip(1), NOW + 300, NOW)
            .expect("repeat");
        t.admit("sig", Action::Describe, ip(2), NOW + 300, NOW + 1)
            .expect("same action elsewhere");
        let e = t
            .admit("sig", Action::Delete, ip(2), NOW + 300, NOW + 2)
            .expect_err("replayed as a Delete");
        assert_eq!(e.first, "DescribeCloudRecording");
        assert!(e.to_string().contains("replayed for another action"));
        // The first address may (Describe then Delete within a second).
        t.admit("sig", Action::Delete, ip(1), NOW + 300, NOW + 2)
            .expect("same client");
        // Another signature is another matter.
        t.admit("sig2", Action::Delete, ip(2), NOW + 300, NOW + 2)
            .expect("other signature");
    }

    #[test]
    fn expired_signatures_are_forgotten_and_memory_is_bounded() {
        let mut t = SignatureBindings::new();
        t.admit("old", Action::Describe, ip(1), NOW + 300, NOW)
            .expect("first");
        t.admit("young", Action::Describe, ip(1), NOW + 400, NOW + 100)
            .expect("second");
        assert_eq!(t.len(), 2);
        // Past its validity the signature would not verify anyway; the
        // table forgets it.
        t.admit("other", Action::Create, ip(1), NOW + 700, NOW + 301)
            .expect("third");
        assert_eq!(t.len(), 2);
        for i in 0..MAX_REMEMBERED + 10 {
            t.admit(
                &format!("s{i}"),
                Action::Describe,
                ip(1),
                NOW + 1000,
                NOW + 302,
            )
            .expect("fresh");
        }
        assert_eq!(t.len(), MAX_REMEMBERED);
    }
}
