//! The client address (`client_ip::resolve`) from a peer, trusted CIDRs
//! and X-Forwarded-For values: no panic; the client is the peer or an
//! address written in a header; an untrusted peer is the client itself;
//! every hop is a trusted address, the peer last.
#![no_main]

use std::net::IpAddr;

use arbitrary::Arbitrary;
use http::HeaderValue;
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;
use tokengate::decide::client_ip::{resolve, ClientIp, PeerAddr, TrustedProxies};

#[derive(Arbitrary, Debug)]
struct Input {
    peer: IpAddr,
    trusted: Vec<(IpAddr, u8)>,
    values: Vec<Vec<u8>>,
}

fuzz_target!(|input: Input| {
    let nets: Vec<IpNet> = input
        .trusted
        .iter()
        .take(4)
        .filter_map(|&(ip, len)| IpNet::new(ip, len % if ip.is_ipv4() { 33 } else { 129 }).ok())
        .collect();
    let trusted = TrustedProxies::new(nets.clone());
    let values: Vec<HeaderValue> = input.values.iter().filter_map(|v| HeaderValue::from_bytes(v).ok()).collect();
    let Ok(r) = resolve(PeerAddr(input.peer), || values.iter(), &trusted) else { return };
    let peer = input.peer.to_canonical();
    let trusts = |ip: IpAddr| nets.iter().any(|n| tokengate::net::canonical_net(*n).contains(&ip));
    if !trusts(peer) {
        assert_eq!((r.client, r.hops.len()), (ClientIp(peer), 0));
        return;
    }
    let written: Vec<IpAddr> = values
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|e| e.trim().parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
        .collect();
    assert!(r.client.0 == peer || written.contains(&r.client.0), "{r:?} from {input:?}");
    assert!(r.hops.iter().all(|&h| trusts(h)), "{r:?}");
    if r.client.0 != peer || !r.hops.is_empty() {
        assert_eq!(r.hops.last(), Some(&peer), "{r:?}");
    }
});
