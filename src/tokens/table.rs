//! The token table a decision reads: an immutable snapshot, built whole by
//! the loader and swapped in whole. No I/O, no async, no locks.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use super::state::{StateRegistry, TokenState};
use crate::decide::client_ip::canonical_net;
use crate::decide::route::RoutePattern;

/// A caller's token as it arrived. Its `Debug` never prints it.
pub struct Token<'a>(pub &'a [u8]);

impl fmt::Debug for Token<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// The SHA-256 digest of a token: the table's key and what token files hold.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// Hashes a token. Done once per request.
    pub fn of(token: &Token<'_>) -> Self {
        Self(Sha256::digest(token.0).into())
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in b.chunks_exact(2).enumerate() {
            let h = crate::decide::route::hex_val(pair[0])?;
            let l = crate::decide::route::hex_val(pair[1])?;
            out[i] = h << 4 | l;
        }
        Some(Self(out))
    }

    /// Lower-case hex, as `token hash` prints it.
    pub fn to_hex(&self) -> String {
        use std::fmt::Write;
        self.0.iter().fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(<redacted>)")
    }
}

/// The ACTIONs a right allows on the XMLAPI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actions {
    /// `["*"]`: every ACTION.
    Any,
    /// These, compared without regard to ASCII case.
    Listed(Box<[Box<str>]>),
}

impl Actions {
    /// Whether `action` (decoded bytes) is allowed. A non-ASCII spelling never
    /// matches a listed name, so no Unicode case mapping can widen a right.
    pub fn allows(&self, action: &[u8]) -> bool {
        match self {
            Actions::Any => true,
            Actions::Listed(list) => list.iter().any(|a| a.as_bytes().eq_ignore_ascii_case(action)),
        }
    }
}

/// A named access right from `[access_rights.NAME]`.
#[derive(Debug)]
pub struct AccessRight {
    /// Its name in the token file.
    pub name: Arc<str>,
    /// ACTIONs allowed on the XMLAPI path.
    pub actions: Actions,
    /// Routes allowed off the XMLAPI path.
    pub routes: Box<[RoutePattern]>,
}

/// Where a token may be used from; empty means anywhere. Shared between
/// tokens with the same list.
#[derive(Debug, Clone, Default)]
pub struct IpRestriction(Arc<[IpNet]>);

impl IpRestriction {
    /// From validated CIDRs; IPv4-mapped entries become IPv4.
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(nets.into_iter().map(canonical_net).collect())
    }

    /// Whether `ip` (already canonical) is allowed.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.0.is_empty() || self.0.iter().any(|n| n.contains(&ip))
    }

    /// The entries, for display.
    pub fn nets(&self) -> &[IpNet] {
        &self.0
    }
}

/// One `[[token]]`, validated.
#[derive(Debug)]
pub struct TokenEntry {
    /// Its unique name: what logs, metrics and `/tokens` show.
    pub name: Arc<str>,
    /// `active = false` refuses it with TOKEN_INACTIVE.
    pub active: bool,
    /// Past this instant it is refused with TOKEN_EXPIRED.
    pub expires: Option<SystemTime>,
    /// Where it may be used from.
    pub ip_restriction: IpRestriction,
    /// What it may do.
    pub right: Arc<AccessRight>,
    /// Its live counters, attached on first use from the registry, so they
    /// are shared with every later table that has this name (and unused
    /// tokens cost nothing).
    pub state: OnceLock<Arc<TokenState>>,
    /// Line of its `[[token]]` in the file, for messages.
    pub line: u32,
}

impl TokenEntry {
    /// Its live state, from `registry` on first use.
    pub fn state(&self, registry: &StateRegistry) -> &Arc<TokenState> {
        self.state.get_or_init(|| registry.for_name(&self.name))
    }
}

/// The digest is uniformly distributed already: its first 8 bytes are the hash.
#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8).take(1) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(b);
        }
    }
}

/// Tokens by digest.
pub type TokenMap = HashMap<TokenHash, TokenEntry, BuildHasherDefault<DigestHasher>>;

/// The whole table, immutable once built.
#[derive(Debug, Default)]
pub struct TokenTable {
    by_hash: TokenMap,
    rights: Vec<Arc<AccessRight>>,
}

impl TokenTable {
    /// Builds a table; the loader has checked that digests and names are unique.
    pub fn from_map(by_hash: TokenMap, rights: Vec<Arc<AccessRight>>) -> Self {
        Self { by_hash, rights }
    }

    /// Finds a token by its digest.
    pub fn get(&self, hash: &TokenHash) -> Option<&TokenEntry> {
        self.by_hash.get(hash)
    }

    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// Every token, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = &TokenEntry> {
        self.by_hash.values()
    }

    /// The access rights, in file order.
    pub fn rights(&self) -> &[Arc<AccessRight>] {
        &self.rights
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_debug_redacts() {
        let h = TokenHash::of(&Token(b"secret"));
        assert_eq!(TokenHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(TokenHash::from_hex(&h.to_hex().to_uppercase()), Some(h));
        assert!(TokenHash::from_hex("abc").is_none());
        assert!(!format!("{h:?}").contains(&h.to_hex()));
        assert_eq!(format!("{:?}", Token(b"secret")), "Token(<redacted>)");
        assert_eq!(h.to_hex(), "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b");
    }

    #[test]
    fn actions_compare_ascii_case_only() {
        let a = Actions::Listed(vec!["TARGETDATA".into()].into());
        assert!(a.allows(b"targetdata"));
        assert!(!a.allows(b"TARGETDATA "));
        assert!(!a.allows("TARGETDAṪA".as_bytes()));
        assert!(Actions::Any.allows(b"anything"));
    }

    #[test]
    fn empty_restriction_allows_any() {
        assert!(IpRestriction::default().allows("192.0.2.1".parse().unwrap()));
        let r = IpRestriction::new(vec!["::ffff:192.0.2.0/120".parse().unwrap()]);
        assert!(r.allows("192.0.2.7".parse().unwrap()));
        assert!(!r.allows("192.0.3.7".parse().unwrap()));
    }
}
