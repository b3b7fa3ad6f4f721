//! The live view of the cluster: which server is the primary, which replicas are healthy and
//! how far behind they are. Written by the monitor (and by sessions that see a server refuse
//! connections), read lock-free on the hot path through `ArcSwap`.

use std::sync::Arc;

use arc_swap::ArcSwap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub addr: Arc<str>,
    pub role: Role,
    /// The last health check (or connection attempt) succeeded.
    pub healthy: bool,
    /// WAL bytes between the primary's current position and this replica's replay position.
    pub lag_bytes: Option<u64>,
    /// Milliseconds of replay delay; 0 when the replica has replayed everything the primary
    /// has written, however long ago the last transaction was.
    pub lag_ms: Option<u64>,
    /// Healthy and within the lag limits: may take reads.
    pub in_rotation: bool,
}

#[derive(Debug, Clone)]
pub struct Topology {
    pub nodes: Vec<Node>,
}

impl Topology {
    /// Node 0 is the primary, the rest replicas, all healthy until proven otherwise (so the
    /// first queries need not wait for the first health check).
    pub fn new(primary: &str, replicas: &[String]) -> Topology {
        let mut nodes = vec![Node::new(primary, Role::Primary)];
        nodes.extend(replicas.iter().map(|r| Node::new(r, Role::Replica)));
        Topology { nodes }
    }

    pub fn primary(&self) -> usize {
        self.nodes.iter().position(|n| n.role == Role::Primary).unwrap_or(0)
    }

    /// The `turn`-th replica (modulo their number) among those in rotation, skipping `exclude`.
    pub fn pick_replica(&self, turn: usize, exclude: &[usize]) -> Option<usize> {
        let candidates = || {
            self.nodes
                .iter()
                .enumerate()
                .filter(|(i, n)| n.role == Role::Replica && n.in_rotation && !exclude.contains(i))
                .map(|(i, _)| i)
        };
        let count = candidates().count();
        if count == 0 {
            return None;
        }
        candidates().nth(turn % count)
    }
}

impl Node {
    fn new(addr: &str, role: Role) -> Node {
        Node { addr: addr.into(), role, healthy: true, lag_bytes: None, lag_ms: None, in_rotation: true }
    }
}

/// The shared handle.
pub struct Cluster {
    pub topology: ArcSwap<Topology>,
}

impl Cluster {
    pub fn new(t: Topology) -> Arc<Cluster> {
        Arc::new(Cluster { topology: ArcSwap::from_pointee(t) })
    }

    pub fn load(&self) -> arc_swap::Guard<Arc<Topology>> {
        self.topology.load()
    }

    /// A session could not reach a server: take it out of rotation until the monitor sees it
    /// healthy again.
    pub fn mark_unreachable(&self, node: usize) {
        self.topology.rcu(|t| {
            let mut t = (**t).clone();
            if let Some(n) = t.nodes.get_mut(node) {
                n.healthy = false;
                n.in_rotation = false;
            }
            t
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_skips_out_of_rotation() {
        let mut t = Topology::new("p:1", &["r1:1".into(), "r2:1".into(), "r3:1".into()]);
        let picks: Vec<_> = (0..3).map(|i| t.pick_replica(i, &[]).unwrap()).collect();
        assert_eq!(picks, vec![1, 2, 3]);
        t.nodes[2].in_rotation = false;
        let picks: Vec<_> = (0..4).map(|i| t.pick_replica(i, &[]).unwrap()).collect();
        assert_eq!(picks, vec![1, 3, 1, 3]);
        assert_eq!(t.pick_replica(0, &[1, 3]), None);
    }
}
