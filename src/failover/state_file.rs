//! The topology kept across restarts (`failover.state_dir`): the current primary, the epoch,
//! the timeline and the fenced servers, by address. Written (to a temporary file, synced,
//! renamed) before any client sees a new primary; read at start, where it wins over the
//! configuration file: a restart neither forgets a fence nor believes a stale primary.

use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Handles;
use super::decide::State;
use crate::cluster::topology::{OutReason, Role, Topology};

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

pub fn save(h: &Handles, state: &State, t: &Topology) -> Result<(), String> {
    let Some(path) = path(&h.config.load().failover.state_dir) else { return Ok(()) };
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

/// The saved state, read again by the failover loop (checked at start).
pub fn load(h: &Handles) -> Option<Saved> {
    load_from(&h.config.load().failover.state_dir).ok().flatten()
}

/// The saved state in `dir`: None when there is none yet. A file that cannot be read or
/// parsed is an error naming the file and what to do: pgsplit must not start believing a
/// topology that may be stale.
pub fn load_from(dir: &str) -> Result<Option<Saved>, String> {
    let Some(path) = path(dir) else { return Ok(None) };
    let what_to_do = "pgsplit writes it after a failover: restore it, or (only if the servers it names are gone) \
                      move it away and set [servers] to the current primary";
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("the state file {} cannot be read ({e}); {what_to_do}", path.display())),
    };
    toml::from_str(&text)
        .map(Some)
        .map_err(|e| format!("the state file {} is corrupt ({}); {what_to_do}", path.display(), e.message()))
}

/// Checks a saved topology against the configured servers: every server it names must be one.
pub fn check(saved: &Saved, t: &Topology, dir: &str) -> Result<(), String> {
    let file = path(dir).map(|p| p.display().to_string()).unwrap_or_default();
    for name in std::iter::once(&saved.primary).chain(saved.fenced.iter()) {
        if !t.nodes.iter().any(|n| *n.addr == **name) {
            return Err(format!(
                "the state file {file} names {name}, which is not among the configured servers: it was written for \
                 another cluster, or [servers] changed; add the server, or move the file away if {name} is gone"
            ));
        }
    }
    Ok(())
}

/// Applies a saved topology (checked) to the configured one at start.
pub fn apply(saved: &Saved, t: &mut Topology) {
    for n in &mut t.nodes {
        let is_primary = *n.addr == *saved.primary;
        n.role = if is_primary { Role::Primary } else { Role::Replica };
        if saved.fenced.iter().any(|f| **f == *n.addr) && !is_primary {
            n.fenced = true;
            n.in_rotation = false;
            n.out = Some(OutReason::Fenced);
        }
    }
    tracing::warn!(primary = %saved.primary, epoch = saved.epoch, fenced = ?saved.fenced, "topology from the state file");
}
