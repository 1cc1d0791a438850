//! Identifiers and clock: Mattermost-compatible 26-character ids and millisecond timestamps.
//!
//! Mattermost ids are 16 random bytes written in z-base-32 without padding. Clients only rely on the
//! length and the lowercase alphabet, but matching the real encoding keeps ids indistinguishable from a
//! real server's, which matters to tools that validate them.

use rand::RngCore;

const ALPHABET: &[u8; 32] = b"ybndrfg8ejkmcpqxot1uwisza345h769";

/// Length of every id and session token.
pub const ID_LEN: usize = 26;

/// A fresh random id (also used as a session token: 128 bits from the OS-seeded CSPRNG).
pub fn new_id() -> String {
    let mut raw = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut raw);
    encode(&raw)
}

fn encode(raw: &[u8; 16]) -> String {
    let mut out = String::with_capacity(ID_LEN);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &b in raw {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((acc >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((acc << (5 - bits)) & 31) as usize]));
    }
    out
}

/// Whether `s` has the shape of an id; lets handlers answer 400 before touching the database.
pub fn is_valid_id(s: &str) -> bool {
    s.len() == ID_LEN && s.bytes().all(|b| ALPHABET.contains(&b))
}

/// Milliseconds since the Unix epoch, the unit of every Mattermost timestamp.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_26_lowercase_base32_and_distinct() {
        let a = new_id();
        let b = new_id();
        assert_eq!(a.len(), ID_LEN);
        assert!(is_valid_id(&a), "{a}");
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
        assert_ne!(a, b);
    }

    #[test]
    fn encoding_matches_known_vector() {
        // All-zero input maps every 5-bit group to the alphabet's first letter.
        assert_eq!(encode(&[0; 16]), "y".repeat(26));
        assert_eq!(encode(&[0xff; 16]).len(), 26);
    }

    #[test]
    fn rejects_malformed_ids() {
        assert!(!is_valid_id("short"));
        assert!(!is_valid_id(&"Y".repeat(26)));
        assert!(!is_valid_id(&"l".repeat(26))); // 'l' is not in the alphabet
        assert!(!is_valid_id(&"y".repeat(27)));
    }
}
