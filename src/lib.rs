//! tokengate: an authentication gateway in front of the Outpost24 OUTSCAN or
//! HIAB XMLAPI. The modules follow a request's path through the gateway:
//! `server` accepts it, `stack` assembles the layers, `decide` grants or
//! refuses it against the `tokens` table, `denial` shapes a refusal, `proxy`
//! forwards a grant, and `telemetry` records what happened.

pub mod admin;
pub mod cli;
pub mod config;
pub mod decide;
pub mod denial;
pub mod diagnostic;
pub mod proxy;
pub mod server;
pub mod stack;
pub mod telemetry;
pub mod tokens;
