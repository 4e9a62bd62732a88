//! The token table a decision reads: an immutable snapshot, built whole by
//! the loader and swapped in whole. No I/O, no async, no locks.

use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use foldhash::fast::RandomState;
use hashbrown::HashTable;
use rustc_hash::FxHashMap;

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use super::state::{SecretTag, StateRegistry, TokenState, MAX_SECRETS};
use crate::net::canonical_net;
use crate::percent::hex_val;
use crate::quota::Limits;
use crate::rights::AccessRight;

/// A caller's token as it arrived. Its `Debug` never prints it.
pub struct Token<'a>(pub &'a [u8]);

impl fmt::Debug for Token<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// The SHA-256 digest of a token: the table's key and what token files hold.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash(pub [u8; 32]);

impl Hash for TokenHash {
    /// All 32 bytes as two 128-bit words (with foldhash: two multiplies),
    /// without the length prefix and byte loop of a slice's hash: this runs
    /// on every request.
    fn hash<H: Hasher>(&self, state: &mut H) {
        let (lo, hi) = self.0.split_at(16);
        state.write_u128(u128::from_le_bytes(lo.try_into().unwrap_or_default()));
        state.write_u128(u128::from_le_bytes(hi.try_into().unwrap_or_default()));
    }
}

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
            let h = hex_val(pair[0])?;
            let l = hex_val(pair[1])?;
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

/// One `[[token]]`, validated, packed: 80 bytes plus its name, so a
/// million tokens fit in about 100 MB (`an_entry_stays_80_bytes` holds it
/// there). Read through [`TokenRef`].
#[derive(Debug)]
pub struct TokenEntry {
    /// The digest of its first secret (position 0); further ones are in
    /// the table's `extra`, so that the usual token of one secret is found
    /// with one look at its entry.
    digest: TokenHash,
    /// Unix milliseconds after which it is expired; 0: never.
    expires_ms: u64,
    /// Live counters, attached on first use from the registry (so they are
    /// shared with every later table that has this name, and unused tokens
    /// cost nothing).
    state: OnceLock<Arc<TokenState>>,
    name_at: u32,
    restriction: u32,
    line: u32,
    /// Index in the table's `extra` of its secret at position 1.
    extra_at: u32,
    right: u16,
    /// Its effective limits, interned in the table's `limits` (0: none).
    limits: u16,
    /// At most [`MAX_NAME_BYTES`]; 16 bits leave room for `limits` in 80 bytes.
    name_len: u16,
    active: bool,
    /// How many secrets (digests) it has, 1 to [`MAX_SECRETS`].
    secrets: u8,
}

/// A token of a table, with the table it belongs to and which of its
/// secrets matched (0 when it was not found by a secret).
#[derive(Debug, Clone, Copy)]
pub struct TokenRef<'t> {
    table: &'t TokenTable,
    entry: &'t TokenEntry,
    secret: u8,
}

impl<'t> TokenRef<'t> {
    /// Its unique name: what logs, metrics and `/tokens` show.
    pub fn name(&self) -> &'t str {
        name_of(&self.table.names, self.entry)
    }

    /// `active = false` refuses it with TOKEN_INACTIVE.
    pub fn active(&self) -> bool {
        self.entry.active
    }

    /// Past this instant it is refused with TOKEN_EXPIRED; `None`: `"never"`.
    pub fn expires(&self) -> Option<SystemTime> {
        (self.entry.expires_ms != 0).then(|| UNIX_EPOCH + Duration::from_millis(self.entry.expires_ms))
    }

    /// Whether it has expired at `now`.
    pub fn expired_at(&self, now: SystemTime) -> bool {
        self.expires().is_some_and(|e| now >= e)
    }

    /// Where it may be used from.
    pub fn ip_restriction(&self) -> &'t IpRestriction {
        &self.table.restrictions[self.entry.restriction as usize]
    }

    /// What it may do.
    pub fn right(&self) -> &'t Arc<AccessRight> {
        &self.table.rights[usize::from(self.entry.right)]
    }

    /// Its limits: its own `rate`, `burst` and `concurrency` where it sets
    /// them, its right's otherwise. Two loads, on every granted request:
    /// the entry's index and the interned set (a token without limits has
    /// index 0, [`Limits::default`]).
    pub fn limits(&self) -> Limits {
        self.table.limits[usize::from(self.entry.limits)]
    }

    /// The index of its interned limits (0: none), for tests of the packing.
    #[cfg(test)]
    pub(crate) fn limits_index(&self) -> u16 {
        self.entry.limits
    }

    /// Line of its `[[token]]` in the file.
    pub fn line(&self) -> u32 {
        self.entry.line
    }

    /// How many secrets it has (`token_sha256` may list up to four).
    pub fn secrets(&self) -> usize {
        usize::from(self.entry.secrets)
    }

    /// The position in `token_sha256` of the secret the request used (0,
    /// the newest, for a token with one secret or not found by a secret).
    pub fn secret_position(&self) -> usize {
        usize::from(self.secret)
    }

    /// What the live state records the secret the request used by.
    pub fn secret(&self) -> SecretTag {
        SecretTag::of(&self.digest_at(self.secret_position()).0)
    }

    /// The last use of each of its secrets, by position (never a digest):
    /// what an operator watches to see an old secret go quiet.
    pub fn secret_last_uses(&self, state: &TokenState) -> Vec<(usize, Option<SystemTime>)> {
        (0..self.secrets()).map(|p| (p, state.secret_last_use(SecretTag::of(&self.digest_at(p).0)))).collect()
    }

    /// Its digests, newest first (for tests and fuzzing, which compare two
    /// tables).
    #[cfg(any(test, fuzzing))]
    pub fn digests(&self) -> Vec<TokenHash> {
        (0..self.secrets()).map(|p| *self.digest_at(p)).collect()
    }

    fn digest_at(&self, position: usize) -> &'t TokenHash {
        match position {
            0 => &self.entry.digest,
            p => &self.table.extra[self.entry.extra_at as usize + p - 1].0,
        }
    }

    /// Its live state, from `registry` on first use.
    pub fn state(&self, registry: &StateRegistry) -> &'t Arc<TokenState> {
        self.entry.state.get_or_init(|| registry.for_name(self.name()))
    }

    /// Its live state if it has any (none when it was never used under this
    /// name).
    pub fn existing_state(&self, registry: &StateRegistry) -> Option<Arc<TokenState>> {
        self.entry.state.get().cloned().or_else(|| registry.get(self.name()))
    }
}

/// The most access rights one file may define (a token numbers its right
/// in 16 bits).
pub const MAX_RIGHTS: usize = 65_535;

/// The most distinct sets of limits one table holds besides "none" (a
/// token numbers its set in 16 bits).
pub const MAX_LIMIT_SETS: usize = 65_535;

/// Longest token name, in bytes (interface.md §4); the table stores a
/// name's length in 16 bits.
pub const MAX_NAME_BYTES: usize = 128;

/// Marks an index slot that points into `extra` rather than `entries`.
const EXTRA: u32 = 1 << 31;

/// The whole table, immutable once built.
#[derive(Debug)]
pub struct TokenTable {
    /// By digest: a position in `entries` (the token's first secret), or
    /// `EXTRA |` a position in `extra` (a further secret).
    index: HashTable<u32>,
    /// Hashes digests for `index`. Seeded at random, and over the whole
    /// digest: a file's digests are whatever its writer put there, and
    /// hand-made ones sharing a long prefix must not pile up in one bucket
    /// (the first 8 bytes alone made 200,000 of them take 99 s to load).
    hasher: RandomState,
    entries: Vec<TokenEntry>,
    /// The secrets after the first, of tokens that have several, each with
    /// its entry; a token's are consecutive, from its `extra_at`.
    extra: Vec<(TokenHash, u32)>,
    /// Every name, back to back.
    names: String,
    restrictions: Vec<IpRestriction>,
    rights: Vec<Arc<AccessRight>>,
    /// Every distinct set of effective limits, `Limits::default()` first.
    limits: Vec<Limits>,
}

impl Default for TokenTable {
    fn default() -> Self {
        Self {
            index: HashTable::default(),
            hasher: RandomState::default(),
            entries: Vec::new(),
            extra: Vec::new(),
            names: String::new(),
            restrictions: Vec::new(),
            rights: Vec::new(),
            limits: vec![Limits::default()],
        }
    }
}

impl TokenTable {
    /// Finds a token by the digest of one of its secrets.
    pub fn get(&self, hash: &TokenHash) -> Option<TokenRef<'_>> {
        let &v = self.index.find(self.hasher.hash_one(hash), |&v| self.slot_digest(v) == hash)?;
        if v & EXTRA == 0 {
            return Some(TokenRef { table: self, entry: &self.entries[v as usize], secret: 0 });
        }
        let x = v & !EXTRA;
        let entry = &self.entries[self.extra[x as usize].1 as usize];
        Some(TokenRef { table: self, entry, secret: (x - entry.extra_at + 1) as u8 })
    }

    fn slot_digest(&self, v: u32) -> &TokenHash {
        slot_digest(&self.entries, &self.extra, v)
    }

    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every token, in file order.
    pub fn entries(&self) -> impl Iterator<Item = TokenRef<'_>> {
        self.entries.iter().map(move |entry| TokenRef { table: self, entry, secret: 0 })
    }

    /// The access rights, in file order.
    pub fn rights(&self) -> &[Arc<AccessRight>] {
        &self.rights
    }
}

fn slot_digest<'a>(entries: &'a [TokenEntry], extra: &'a [(TokenHash, u32)], v: u32) -> &'a TokenHash {
    if v & EXTRA == 0 {
        &entries[v as usize].digest
    } else {
        &extra[(v & !EXTRA) as usize].0
    }
}

/// Why a token could not be added: what it shares with an earlier one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Duplicate {
    /// Another token has this name; the line of that one.
    pub name: Option<u32>,
    /// One of its digests (this position of the row's `digests`) is
    /// another token's (the same secret): that token's name and line.
    pub token: Option<(usize, String, u32)>,
    /// The table cannot hold more tokens or secrets (2^31 of each).
    pub full: bool,
}

/// Builds a [`TokenTable`], refusing duplicate names and digests.
#[derive(Debug, Default)]
pub struct TableBuilder {
    table: TokenTable,
    /// Positions in `entries`, by name.
    by_name: HashTable<u32>,
    /// Hashes names for `by_name` (seeded: names are the writer's too).
    name_hasher: RandomState,
    restriction_ids: FxHashMap<Vec<IpNet>, u32>,
    limit_ids: FxHashMap<Limits, u16>,
}

/// One token as [`TableBuilder::insert`] takes it, validated.
#[derive(Debug, Clone, Copy)]
pub struct TokenRow<'a> {
    /// SHA-256 of each of its secrets, newest first: 1 to [`MAX_SECRETS`],
    /// distinct.
    pub digests: &'a [TokenHash],
    /// Its name, at most [`MAX_NAME_BYTES`]; the builder refuses a second
    /// token with the same one.
    pub name: &'a str,
    /// `false`: refused with TOKEN_INACTIVE.
    pub active: bool,
    /// From this instant on refused with TOKEN_EXPIRED; `None`: never.
    pub expires: Option<SystemTime>,
    /// Its access right, as [`TableBuilder::add_right`] numbered it.
    pub right: u16,
    /// Its IP restriction, as [`TableBuilder::restriction`] numbered it.
    pub restriction: u32,
    /// Its effective limits, as [`TableBuilder::limits`] numbered them.
    pub limits: u16,
    /// Line of its `[[token]]`.
    pub line: u32,
}

fn name_of<'n>(names: &'n str, e: &TokenEntry) -> &'n str {
    let at = e.name_at as usize;
    &names[at..at + e.name_len as usize]
}

impl TableBuilder {
    /// Room for about `n` tokens.
    pub fn with_capacity(n: usize) -> Self {
        let mut b = Self::default();
        b.table.entries.reserve(n);
        b.table.index.reserve(n, |_| 0);
        b.by_name.reserve(n, |_| 0);
        b
    }

    /// Adds an access right; returns its index for [`TableBuilder::insert`],
    /// or `None` past [`MAX_RIGHTS`].
    pub fn add_right(&mut self, right: Arc<AccessRight>) -> Option<u16> {
        let index = u16::try_from(self.table.rights.len()).ok().filter(|&i| usize::from(i) < MAX_RIGHTS)?;
        self.table.rights.push(right);
        Some(index)
    }

    /// Whether no token was added.
    pub fn is_empty(&self) -> bool {
        self.table.entries.is_empty()
    }

    /// How many rights were added.
    pub fn rights(&self) -> usize {
        self.table.rights.len()
    }

    /// Interns a restriction; identical lists share one.
    pub fn restriction(&mut self, nets: Vec<IpNet>) -> u32 {
        if let Some(&id) = self.restriction_ids.get(&nets) {
            return id;
        }
        let id = self.table.restrictions.len() as u32;
        self.table.restrictions.push(IpRestriction::new(nets.clone()));
        self.restriction_ids.insert(nets, id);
        id
    }

    /// Interns a token's effective limits; identical sets share one, and
    /// no limits at all is 0. `None` past [`MAX_LIMIT_SETS`] distinct sets.
    pub fn limits(&mut self, limits: Limits) -> Option<u16> {
        if limits == Limits::default() {
            return Some(0);
        }
        if let Some(&id) = self.limit_ids.get(&limits) {
            return Some(id);
        }
        let id = u16::try_from(self.table.limits.len()).ok()?;
        self.table.limits.push(limits);
        self.limit_ids.insert(limits, id);
        Some(id)
    }

    /// Adds a token. On a duplicate the table is unchanged.
    pub fn insert(&mut self, t: TokenRow<'_>) -> Result<(), Duplicate> {
        let TokenTable { index, hasher, entries, extra, names, limits, .. } = &mut self.table;
        assert!((1..=MAX_SECRETS).contains(&t.digests.len()), "a token has 1 to {MAX_SECRETS} digests");
        assert!(t.name.len() <= MAX_NAME_BYTES, "a token name has at most {MAX_NAME_BYTES} bytes");
        assert!(usize::from(t.limits) < limits.len(), "limits numbered by TableBuilder::limits");
        let name_hash = self.name_hasher.hash_one(t.name);
        let same_name = self.by_name.find(name_hash, |&i| name_of(names, &entries[i as usize]) == t.name);
        let same_digest = t.digests.iter().enumerate().find_map(|(k, d)| {
            let &v = index.find(hasher.hash_one(d), |&v| slot_digest(entries, extra, v) == d)?;
            let owner = if v & EXTRA == 0 { v } else { extra[(v & !EXTRA) as usize].1 };
            let first = &entries[owner as usize];
            Some((k, name_of(names, first).to_string(), first.line))
        });
        if same_name.is_some() || same_digest.is_some() {
            return Err(Duplicate {
                name: same_name.map(|&i| entries[i as usize].line),
                token: same_digest,
                full: false,
            });
        }
        let (pos, extra_at) = (entries.len() as u32, extra.len() as u32);
        if entries.len() >= EXTRA as usize || extra.len() + t.digests.len() >= EXTRA as usize {
            return Err(Duplicate { full: true, ..Duplicate::default() });
        }
        let name_at = names.len() as u32;
        names.push_str(t.name);
        let expires_ms = t.expires.map_or(0, |e| {
            e.duration_since(UNIX_EPOCH).map_or(1, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1))
        });
        entries.push(TokenEntry {
            digest: t.digests[0],
            expires_ms,
            state: OnceLock::new(),
            name_at,
            name_len: t.name.len() as u16,
            restriction: t.restriction,
            line: t.line,
            extra_at,
            right: t.right,
            limits: t.limits,
            active: t.active,
            secrets: t.digests.len() as u8,
        });
        let rehash = |entries: &[TokenEntry], extra: &[(TokenHash, u32)], v: u32| {
            hasher.hash_one(slot_digest(entries, extra, v))
        };
        index.insert_unique(hasher.hash_one(t.digests[0]), pos, |&v| rehash(entries, extra, v));
        for d in &t.digests[1..] {
            let x = extra.len() as u32;
            extra.push((*d, pos));
            index.insert_unique(hasher.hash_one(d), EXTRA | x, |&v| rehash(entries, extra, v));
        }
        let names: &str = names;
        let name_hasher = &self.name_hasher;
        self.by_name.insert_unique(name_hash, pos, |&i| name_hasher.hash_one(name_of(names, &entries[i as usize])));
        Ok(())
    }

    /// The finished table, its storage trimmed to what it holds.
    pub fn finish(mut self) -> TokenTable {
        let TokenTable { index, hasher, entries, extra, names, .. } = &mut self.table;
        entries.shrink_to_fit();
        extra.shrink_to_fit();
        names.shrink_to_fit();
        index.shrink_to(0, |&v| hasher.hash_one(slot_digest(entries, extra, v)));
        self.table
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
    fn an_entry_stays_80_bytes() {
        // A million tokens: 80 MB of entries; limits cost 2 bytes of each,
        // taken from the name's length (names are at most 128 bytes).
        assert_eq!(std::mem::size_of::<TokenEntry>(), 80);
    }

    #[test]
    fn limits_are_interned_and_none_is_zero() {
        let mut b = TableBuilder::default();
        let rate = crate::quota::Rate::parse("10/s");
        let l = Limits { rate, ..Limits::default() };
        assert_eq!(b.limits(Limits::default()), Some(0));
        assert_eq!(b.limits(l), Some(1));
        assert_eq!(b.limits(Limits { concurrency: Some(2), ..l }), Some(2));
        assert_eq!(b.limits(l), Some(1));
        for n in 3..=MAX_LIMIT_SETS as u32 {
            assert!(b.limits(Limits { concurrency: Some(n), ..Limits::default() }).is_some());
        }
        assert_eq!(b.limits(Limits { concurrency: Some(1), ..Limits::default() }), None, "past the 16-bit index");
        let digest = [TokenHash([7; 32])];
        let row = TokenRow {
            digests: &digest,
            name: "a",
            active: true,
            expires: None,
            right: 0,
            restriction: 0,
            limits: 2,
            line: 1,
        };
        b.insert(row).unwrap();
        let t = b.finish();
        let e = t.get(&digest[0]).unwrap();
        assert_eq!((e.limits().rate, e.limits().concurrency), (rate, Some(2)));
    }

    #[test]
    fn empty_restriction_allows_any() {
        assert!(IpRestriction::default().allows("192.0.2.1".parse().unwrap()));
        let r = IpRestriction::new(vec!["::ffff:192.0.2.0/120".parse().unwrap()]);
        assert!(r.allows("192.0.2.7".parse().unwrap()));
        assert!(!r.allows("192.0.3.7".parse().unwrap()));
    }
}
