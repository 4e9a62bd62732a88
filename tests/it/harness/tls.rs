//! TLS for the tests: self-signed certificates, and a blocking HTTPS client
//! that trusts exactly the certificate it is given.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use super::client::Response;

/// A self-signed certificate for these names: (certificate PEM, key PEM).
pub fn self_signed(names: &[&str]) -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    (ck.cert.pem(), ck.key_pair.serialize_pem())
}

/// One HTTPS request to `addr`, trusting only `ca_pem`, with SNI `name`.
pub fn https_get(addr: SocketAddr, ca_pem: &str, name: &str, target: &str) -> Response {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap()).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), ServerName::try_from(name.to_string()).unwrap()).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(tls, "GET {target} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    // A peer that closes without close_notify still gave us its answer.
    let _ = tls.read_to_end(&mut buf);
    super::client::parse(&buf).unwrap_or_else(|| panic!("unparsable answer: {:?}", String::from_utf8_lossy(&buf)))
}

/// A client config that trusts only `ca_pem`, offering HTTP/1.1.
pub fn client_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// A real TLS client's first flight (its ClientHello), as bytes, for tests
/// that send only part of a handshake.
pub fn client_hello(ca_pem: &str, name: &str) -> Vec<u8> {
    let mut conn =
        rustls::ClientConnection::new(client_config(ca_pem), ServerName::try_from(name.to_string()).unwrap()).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// A TLS connection with the handshake done, trusting only `ca_pem`; the
/// server's certificate (DER) is `peer_cert()`.
pub fn tls_connect(addr: SocketAddr, ca_pem: &str, name: &str) -> std::io::Result<TlsStream> {
    let conn =
        rustls::ClientConnection::new(client_config(ca_pem), ServerName::try_from(name.to_string()).unwrap()).unwrap();
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// A client TLS stream over TCP.
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// The end-entity certificate the server presented.
pub fn peer_cert(s: &TlsStream) -> Vec<u8> {
    s.conn.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default()
}

/// The DER of a PEM certificate.
pub fn der_of(cert_pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap().to_vec()
}

/// One HTTP/1.1 request on an open TLS stream, kept alive; the answer.
pub fn https_on(s: &mut TlsStream, target: &str, name: &str) -> Response {
    write!(s, "GET {target} HTTP/1.1\r\nHost: {name}\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        if let Some(r) = super::client::parse(&buf) {
            let len = r.header("content-length").and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
            if r.body.len() >= len {
                return r;
            }
        }
        match s.read(&mut b) {
            Ok(0) | Err(_) => panic!("the TLS connection ended mid-answer: {:?}", String::from_utf8_lossy(&buf)),
            Ok(n) => buf.extend_from_slice(&b[..n]),
        }
    }
}
