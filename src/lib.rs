//! tokengate: an authentication gateway in front of the Outpost24 OUTSCAN or
//! HIAB XMLAPI.
//!
//! The modules in layers, each using only the layers above it (a test,
//! `tests/it/layers.rs`, holds this list to the code).

// Vocabulary, the leaves: config errors with their location, addresses and
// CIDRs, percent-decoding, per-token limits and their live state, what an
// access right allows, and every answer the gateway gives itself.
pub mod denial;
pub mod diagnostic;
pub mod net;
pub mod percent;
pub mod quota;
pub mod rights;

// `gateway.toml`.
pub mod config;

// The token file, the table a decision reads, live per-token state, reloading.
pub mod tokens;

// The pure decision of interface.md §5.
pub mod decide;

// What hyper's HTTP/1 parser reads and forgets (fragments, a length beside
// chunked framing), noted per request head.
pub mod wire;

// Access log, metrics, the logger.
pub mod telemetry;

// One request's stages, from its body to the upstream's answer.
pub mod proxy;

// The layers around each request.
pub mod stack;

// Listeners and connections; the admin endpoints.
pub mod admin;
pub mod server;

// The commands, on top.
pub mod cli;
