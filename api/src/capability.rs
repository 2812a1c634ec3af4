//! Log capabilities (DESIGN §12): an agent's log server answers only what
//! the master authorised. At registration the master gives each node a
//! random log key; to proxy a task's log it signs, with that key, the alloc
//! and a near expiry, and sends the result as the bearer token. The agent
//! checks the signature (HMAC-SHA256) and the expiry; anything else is 401.
//!
//! A capability reads `<expiry, unix ms>.<64 hex digits>`. It names no
//! alloc itself: the signature covers the alloc of the request's path, so
//! a capability for one alloc opens no other.

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::ids::AllocId;

/// How long a capability is good for after it is signed.
pub const LIFETIME_MS: u64 = 60_000;
/// How far the agent's clock may be behind or ahead of the master's.
pub const CLOCK_SKEW_MS: u64 = 300_000;

/// Why a log request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapabilityError {
    #[error("this agent has no log key yet (it has not registered with a master)")]
    NoKey,
    #[error("no capability: logs are served only to the master (send Authorization: Bearer <capability>)")]
    Missing,
    #[error("the capability is not one this agent's master signed for this allocation")]
    Invalid,
    #[error("the capability expired")]
    Expired,
}

/// A new random key, in hex (as the master stores and sends it).
pub fn new_key() -> Option<String> {
    let mut key = [0u8; 32];
    SystemRandom::new().fill(&mut key).ok()?;
    Some(to_hex(&key))
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 32 bytes from 64 hex digits; `None` for anything else.
fn from_hex32(hex: &str) -> Option<Vec<u8>> {
    if hex.len() != 64 {
        return None;
    }
    (0..64)
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

fn key(hex: &str) -> Option<hmac::Key> {
    Some(hmac::Key::new(hmac::HMAC_SHA256, &from_hex32(hex)?))
}

fn message(alloc: &AllocId, expiry_ms: u64) -> String {
    format!("drover-log\n{alloc}\n{expiry_ms}")
}

/// The capability for `alloc`'s logs, good until `now_ms + LIFETIME_MS`.
/// `None` when `key_hex` is not a key.
pub fn sign(key_hex: &str, alloc: &AllocId, now_ms: u64) -> Option<String> {
    let expiry = now_ms.saturating_add(LIFETIME_MS);
    let tag = hmac::sign(&key(key_hex)?, message(alloc, expiry).as_bytes());
    Some(format!("{expiry}.{}", to_hex(tag.as_ref())))
}

/// Checks the capability presented for `alloc`'s logs.
pub fn verify(
    key_hex: Option<&str>,
    alloc: &AllocId,
    capability: Option<&str>,
    now_ms: u64,
) -> Result<(), CapabilityError> {
    let key = key(key_hex.ok_or(CapabilityError::NoKey)?).ok_or(CapabilityError::NoKey)?;
    let capability = capability.ok_or(CapabilityError::Missing)?;
    let (expiry, tag) = capability.split_once('.').ok_or(CapabilityError::Invalid)?;
    let expiry: u64 = expiry.parse().map_err(|_| CapabilityError::Invalid)?;
    let tag = from_hex32(tag).ok_or(CapabilityError::Invalid)?;
    hmac::verify(&key, message(alloc, expiry).as_bytes(), &tag)
        .map_err(|_| CapabilityError::Invalid)?;
    // Signed: the expiry is the master's. Past it, give the clocks leeway.
    if now_ms > expiry.saturating_add(CLOCK_SKEW_MS)
        || expiry > now_ms.saturating_add(LIFETIME_MS + CLOCK_SKEW_MS)
    {
        return Err(CapabilityError::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(s: &str) -> AllocId {
        s.parse().unwrap()
    }

    #[test]
    fn a_capability_opens_its_own_alloc_under_its_own_key_until_it_expires() {
        let k = new_key().unwrap();
        let other_key = new_key().unwrap();
        assert_ne!(k, other_key);
        let a = alloc("render/0/1");
        let now = 1_800_000_000_000;
        let cap = sign(&k, &a, now).unwrap();
        assert_eq!(verify(Some(&k), &a, Some(&cap), now), Ok(()));
        assert_eq!(
            verify(Some(&k), &a, Some(&cap), now + LIFETIME_MS + CLOCK_SKEW_MS),
            Ok(())
        );
        assert_eq!(
            verify(
                Some(&k),
                &a,
                Some(&cap),
                now + LIFETIME_MS + CLOCK_SKEW_MS + 1
            ),
            Err(CapabilityError::Expired)
        );
        assert_eq!(
            verify(Some(&k), &alloc("render/0/2"), Some(&cap), now),
            Err(CapabilityError::Invalid)
        );
        assert_eq!(
            verify(Some(&other_key), &a, Some(&cap), now),
            Err(CapabilityError::Invalid)
        );
        // A later expiry written over a genuine signature does not verify.
        let (_, tag) = cap.split_once('.').unwrap();
        let stretched = format!("{}.{tag}", now + 10 * LIFETIME_MS);
        assert_eq!(
            verify(Some(&k), &a, Some(&stretched), now),
            Err(CapabilityError::Invalid)
        );
        assert_eq!(
            verify(Some(&k), &a, None, now),
            Err(CapabilityError::Missing)
        );
        assert_eq!(
            verify(None, &a, Some(&cap), now),
            Err(CapabilityError::NoKey)
        );
        let multibyte = format!("1.{}", "é".repeat(32));
        for junk in [
            "",
            "x",
            "1.zz",
            &format!("1.{}", "0".repeat(64)),
            &multibyte,
        ] {
            assert_eq!(
                verify(Some(&k), &a, Some(junk), now),
                Err(CapabilityError::Invalid),
                "{junk:?}"
            );
        }
    }
}
