//! The token table: the file operators edit, the immutable snapshot requests
//! read, the live per-token state, and the reloader that swaps snapshots.

pub mod file;
mod lines;
pub mod raw;
pub mod read;
pub mod reload;
pub mod state;
pub mod table;
