//! Which address a request comes from: the socket peer, or, when the peer is
//! a trusted proxy, the rightmost address in X-Forwarded-For that is not one.
//! Pure: no I/O.

use std::net::IpAddr;

use http::header::HeaderValue;
use ipnet::IpNet;

use crate::net::canonical_net;

/// The address the decision is made for, with `::ffff:a.b.c.d` as `a.b.c.d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// The address of the socket peer (which may be a proxy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub IpAddr);

/// An X-Forwarded-For from a trusted proxy that has an entry that is not an
/// IP address: the client cannot be known, so the request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadForwardedFor;

/// The CIDRs whose X-Forwarded-For is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Box<[IpNet]>);

impl TrustedProxies {
    /// From the validated `client_ip.trusted_proxies`.
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(nets.into_iter().map(canonical_net).collect())
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(&ip))
    }
}

/// The decided client address, and the trusted hops between it and us (for
/// the X-Forwarded-For sent upstream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The client the decision is made for.
    pub client: ClientIp,
    /// Trusted proxies the request passed through after the client, in order,
    /// ending with the peer when the peer is not the client.
    pub hops: Vec<IpAddr>,
}

/// Resolves the client address from the peer and its X-Forwarded-For
/// headers (asked for only when the peer is a trusted proxy: the usual
/// untrusted peer costs no header lookup).
pub fn resolve<'h, I>(
    peer: PeerAddr,
    xff: impl FnOnce() -> I,
    trusted: &TrustedProxies,
) -> Result<Resolved, BadForwardedFor>
where
    I: DoubleEndedIterator<Item = &'h HeaderValue>,
{
    let peer = peer.0.to_canonical();
    if !trusted.trusts(peer) {
        return Ok(Resolved { client: ClientIp(peer), hops: Vec::new() });
    }
    let mut hops = vec![peer];
    for value in xff().rev() {
        let value = value.to_str().map_err(|_| BadForwardedFor)?;
        for entry in value.rsplit(',') {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let ip: IpAddr = entry.parse().map_err(|_| BadForwardedFor)?;
            let ip = ip.to_canonical();
            if !trusted.trusts(ip) {
                hops.reverse();
                return Ok(Resolved { client: ClientIp(ip), hops });
            }
            hops.push(ip);
        }
    }
    // Every hop was trusted: the leftmost one is the client.
    let client = hops.pop().unwrap_or(peer);
    hops.reverse();
    Ok(Resolved { client: ClientIp(client), hops })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| n.parse().unwrap()).collect())
    }

    fn run(peer: &str, xff: &[&str], t: &TrustedProxies) -> Result<Resolved, BadForwardedFor> {
        let hv: Vec<HeaderValue> = xff.iter().map(|v| HeaderValue::from_str(v).unwrap()).collect();
        resolve(PeerAddr(peer.parse().unwrap()), || hv.iter(), t)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_ignores_forwarded_for() {
        let r = run("198.51.100.1", &["10.0.0.1"], &tp(&["10.0.0.0/8"])).unwrap();
        assert_eq!(r.client, ClientIp(ip("198.51.100.1")));
        assert!(r.hops.is_empty());
    }

    #[test]
    fn trusted_peer_gives_rightmost_untrusted() {
        let t = tp(&["10.0.0.0/8"]);
        let r = run("10.0.0.1", &["1.1.1.1, 2.2.2.2, 10.0.0.9"], &t).unwrap();
        assert_eq!(r.client, ClientIp(ip("2.2.2.2")));
        assert_eq!(r.hops, vec![ip("10.0.0.9"), ip("10.0.0.1")]);
        // Several headers read as one list, in order.
        let r = run("10.0.0.1", &["1.1.1.1", "2.2.2.2"], &t).unwrap();
        assert_eq!(r.client, ClientIp(ip("2.2.2.2")));
        // All trusted: the leftmost.
        let r = run("10.0.0.1", &["10.1.1.1, 10.2.2.2"], &t).unwrap();
        assert_eq!(r.client, ClientIp(ip("10.1.1.1")));
        // No header: the peer itself.
        let r = run("10.0.0.1", &[], &t).unwrap();
        assert_eq!(r.client, ClientIp(ip("10.0.0.1")));
    }

    #[test]
    fn unparsable_entry_denies_and_is_not_skipped() {
        let t = tp(&["10.0.0.0/8"]);
        assert_eq!(run("10.0.0.1", &["1.1.1.1, junk"], &t), Err(BadForwardedFor));
        assert_eq!(run("10.0.0.1", &["1.1.1.1:80"], &t), Err(BadForwardedFor));
        // Left of the client it is never read.
        assert!(run("10.0.0.1", &["junk, 2.2.2.2"], &t).is_ok());
    }

    #[test]
    fn mapped_addresses_are_canonical() {
        let t = tp(&["::ffff:10.0.0.0/104"]);
        let r = run("::ffff:10.0.0.1", &["::ffff:2.2.2.2"], &t).unwrap();
        assert_eq!(r.client, ClientIp(ip("2.2.2.2")));
        assert_eq!(canonical_net("::ffff:192.0.2.0/120".parse().unwrap()), "192.0.2.0/24".parse().unwrap());
    }
}
