//! tokengate's integration tests: the real binary, a mock upstream that
//! records what reaches it, on ephemeral ports of 127.0.0.1.

mod harness;
mod inspect;

mod admin;
mod cli;
mod decision;
mod forwarding;
mod framing;
mod layers;
mod pipeline;
mod reload;
mod rest;
mod tls;
mod tomcat;
