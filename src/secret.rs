//! Tokens and other secrets that must never reach a log line.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A secret string (an `as_token`, `hs_token`, webhook secret, ...).
///
/// `Debug` and `Display` print `***`, so a secret that ends up in a `tracing` field or an error
/// message reveals nothing. The value is reachable only through [`Secret::expose`], which makes
/// every place that uses the real value easy to find.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// Generates a fresh random secret of `len` alphanumeric characters from the operating
    /// system's CSPRNG.
    pub fn generate(len: usize) -> Self {
        use ring::rand::{SecureRandom, SystemRandom};
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let rng = SystemRandom::new();
        let mut out = String::with_capacity(len);
        let mut buf = [0u8; 64];
        while out.len() < len {
            rng.fill(&mut buf).expect("the operating system's random source is available");
            // 248 = 4 * 62: rejecting larger bytes keeps every character equally likely.
            for &b in buf.iter().filter(|&&b| b < 248) {
                if out.len() == len {
                    break;
                }
                out.push(ALPHABET[usize::from(b) % ALPHABET.len()] as char);
            }
        }
        Self(out)
    }

    /// Returns the real value. Call this only to put the secret on the wire or in a file.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares with `other` in time that depends only on the lengths, not on where the first
    /// differing byte is.
    pub fn constant_time_eq(&self, other: &str) -> bool {
        constant_time_eq(self.0.as_bytes(), other.as_bytes())
    }

    /// Returns true when the secret is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The SHA-256 of `data` as lower-case hex: for storing a token's fingerprint instead of the
/// token itself.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

/// Lower-case hex of some bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Compares two byte strings without an early exit on the first difference.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        let s = Secret::new("abcdef");
        assert!(s.constant_time_eq("abcdef"));
        assert!(!s.constant_time_eq("abcdeg"));
        assert!(!s.constant_time_eq("abcde"));
        assert!(!s.constant_time_eq(""));
    }

    #[test]
    fn generated_secrets_differ_and_have_the_asked_length() {
        let a = Secret::generate(64);
        let b = Secret::generate(64);
        assert_eq!(a.expose().len(), 64);
        assert_ne!(a, b);
        assert!(a.expose().chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
