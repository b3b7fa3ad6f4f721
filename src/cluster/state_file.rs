//! The topology kept across restarts (`failover.state_dir`): the current primary, the epoch,
//! the timeline and the fenced servers, by address. Written (to a temporary file, synced,
//! renamed) before any client sees a new primary; read at start, where it wins over the
//! configuration file: a restart neither forgets a fence nor believes a stale primary.

use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::failover::State;
use super::topology::Topology;
use crate::Shared;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    pub epoch: u64,
    pub primary: String,
    pub timeline: u32,
    pub fenced: Vec<String>,
}

fn path(dir: &str) -> Option<PathBuf> {
    (!dir.is_empty()).then(|| PathBuf::from(dir).join("pgsplit-state.toml"))
}

pub fn save(shared: &Shared, state: &State, t: &Topology) -> Result<(), String> {
    let Some(path) = path(&shared.config.load().failover.state_dir) else { return Ok(()) };
    let addr = |i: usize| t.nodes.get(i).map(|n| n.addr.to_string()).unwrap_or_default();
    let saved = Saved {
        epoch: state.epoch,
        primary: addr(state.primary),
        timeline: state.timeline,
        fenced: state.fenced.iter().map(|&i| addr(i)).collect(),
    };
    let text = toml::to_string(&saved).map_err(|e| e.to_string())?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let tmp = path.with_extension("toml.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

pub fn load(shared: &Shared) -> Option<Saved> {
    load_from(&shared.config.load().failover.state_dir)
}

pub fn load_from(dir: &str) -> Option<Saved> {
    let path = path(dir)?;
    let text = std::fs::read_to_string(&path).ok()?;
    match toml::from_str(&text) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(file = %path.display(), "ignoring an unreadable state file: {e}");
            None
        }
    }
}

/// Applies a saved topology to the configured one at start.
pub fn apply(saved: &Saved, t: &mut Topology) {
    if !t.nodes.iter().any(|n| *n.addr == *saved.primary) {
        tracing::error!(primary = %saved.primary, "the state file names a primary that is not configured: ignored");
        return;
    }
    for n in &mut t.nodes {
        let is_primary = *n.addr == *saved.primary;
        n.role = if is_primary { super::Role::Primary } else { super::Role::Replica };
        if saved.fenced.iter().any(|f| **f == *n.addr) && !is_primary {
            n.fenced = true;
            n.in_rotation = false;
            n.out = Some(super::OutReason::Fenced);
        }
    }
    tracing::warn!(primary = %saved.primary, epoch = saved.epoch, fenced = ?saved.fenced, "topology from the state file");
}
