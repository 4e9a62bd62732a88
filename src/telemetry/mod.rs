//! What operators see of the request path: the access log, the metrics, and
//! the logger itself. Nothing here decides anything.

pub mod access;
pub mod format;
pub mod log;
pub mod metrics;
