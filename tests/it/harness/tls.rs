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
