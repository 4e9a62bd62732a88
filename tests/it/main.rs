//! tokengate's integration tests: the real binary, a mock upstream that
//! records what reaches it, on ephemeral ports of 127.0.0.1.

mod harness;
mod inspect;

mod admin;
mod cli;
mod deadlines;
mod decision;
mod faults;
mod forwarding;
mod framing;
mod layers;
mod limits;
mod metrics_text;
mod pipeline;
mod reload;
mod rest;
mod tls;
mod tomcat;
