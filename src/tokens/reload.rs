//! The token store: the table now serving behind an atomic pointer, and the
//! only code that replaces it. A new table is parsed and validated whole,
//! off the request path, then swapped in at one instant; a file with any
//! error is not applied and the last good table keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

use super::file::{self, Loaded};
use super::state::StateRegistry;
use super::table::TokenTable;
use crate::diagnostic::{ConfigError, ConfigErrors};
use crate::telemetry::metrics::{Metrics, ReloadOutcome};

/// The table requests read, and what a reload needs to replace it.
pub struct TokenStore {
    current: ArcSwap<TokenTable>,
    states: Arc<StateRegistry>,
    path: PathBuf,
    metrics: Arc<Metrics>,
}

impl TokenStore {
    /// Loads the file for the first time. There is no last good table yet,
    /// so an invalid file is an error for the caller to report. Returns the
    /// store and the file's warnings.
    pub fn open(
        path: &Path,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, Vec<ConfigError>), ConfigErrors> {
        let states = Arc::new(StateRegistry::default());
        let Loaded { table, warnings } = file::load(path, &states)?;
        metrics.reload(ReloadOutcome::Success, table.len());
        let store = Self {
            current: ArcSwap::from_pointee(table),
            states,
            path: path.to_path_buf(),
            metrics,
        };
        Ok((store, warnings))
    }

    /// The table now serving. Lock-free; hold it only for one decision.
    pub fn current(&self) -> Guard<Arc<TokenTable>> {
        self.current.load()
    }

    /// The live per-token state, by name.
    pub fn states(&self) -> &Arc<StateRegistry> {
        &self.states
    }

    /// The token file this store reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file again; on success swaps the new table in whole, on
    /// failure keeps the current one and logs every error.
    pub fn reload(&self) -> Result<usize, ConfigErrors> {
        match file::load(&self.path, &self.states) {
            Ok(loaded) => {
                let n = loaded.table.len();
                let old = self.current.swap(Arc::new(loaded.table));
                // Names gone from the file take their counters with them.
                let table = self.current.load();
                let names: std::collections::HashSet<&str> =
                    table.entries().map(|e| &*e.name).collect();
                self.states.retain(|n| names.contains(n));
                self.metrics.reload(ReloadOutcome::Success, n);
                tracing::info!(tokens = n, file = %self.path.display(), "token file reloaded");
                // The old table is freed here, off the request path, unless
                // a request still holds it.
                drop(old);
                Ok(n)
            }
            Err(errors) => {
                self.metrics.reload(ReloadOutcome::Failure, 0);
                for e in &errors.0 {
                    tracing::error!(error = %e, "token file not applied; the last good table keeps serving");
                }
                Err(errors)
            }
        }
    }
}
