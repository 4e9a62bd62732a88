//! The token table: the file operators edit, the immutable snapshot requests
//! read, the live per-token state, the reloader that swaps snapshots, and
//! the one way commands change the file.

pub mod edit;
pub mod file;
mod lines;
pub mod raw;
pub mod read;
pub mod reload;
pub mod state;
pub mod table;
