//! Which replica a read goes to, among those a caller finds eligible: random or round robin in
//! proportion to each replica's `weight`, or the one with the least client work running per
//! unit of weight. With `routing.primary_read_weight` the primary is a candidate too, with that
//! weight (it needs no freshness check: it has every write). A pure function of the topology
//! and a turn number.

use super::topology::{Node, Role, Topology};
use crate::config::Balance;

impl Topology {
    /// A replica in rotation, skipping `exclude`, chosen by the balancing policy (`turn` is a
    /// round-robin counter or a random number).
    pub fn pick_replica(&self, turn: usize, exclude: &[usize]) -> Option<usize> {
        pick(self, turn, false, |i, n| n.in_rotation && !exclude.contains(&i))
    }
}

/// Picks an eligible replica, or with `with_primary` and a `primary_read_weight` the primary
/// (when it is up). `turn` is a round-robin counter or a random number, as the topology's
/// policy wants (see `Cluster::next_turn`).
pub fn pick(t: &Topology, turn: usize, with_primary: bool, eligible: impl Fn(usize, &Node) -> bool) -> Option<usize> {
    let primary = t.primary();
    let primary_weight = if with_primary { t.primary_read_weight } else { 0 };
    let eligible = &eligible;
    let candidates = || {
        t.nodes.iter().enumerate().filter(move |(i, n)| {
            if n.removed || n.fenced || n.paused {
                return false;
            }
            match n.role {
                Role::Replica => eligible(*i, n),
                Role::Primary => primary_weight > 0 && *i == primary && n.healthy,
            }
        })
    };
    let weight = |n: &Node| {
        if n.role == Role::Primary { u64::from(primary_weight) } else { u64::from(n.settings.weight.max(1)) }
    };
    match t.balance {
        Balance::Random | Balance::RoundRobin => {
            let total: u64 = candidates().map(|(_, n)| weight(n)).sum();
            if total == 0 {
                return None;
            }
            let mut slot = turn as u64 % total;
            for (i, n) in candidates() {
                let w = weight(n);
                if slot < w {
                    return Some(i);
                }
                slot -= w;
            }
            None
        }
        Balance::LeastOutstanding => {
            // Lowest load per weight; ties broken by the turn so equal replicas share.
            let score = |n: &Node| n.outstanding() as u64 * 1000 / weight(n).max(1);
            // No allocation: count the tied, then take one of them (loads move meanwhile: then
            // the least loaded as it is now).
            let best = candidates().map(|(_, n)| score(n)).min()?;
            let tied = candidates().filter(|(_, n)| score(n) == best).count().max(1);
            candidates()
                .filter(|(_, n)| score(n) == best)
                .nth(turn % tied)
                .or_else(|| candidates().min_by_key(|(_, n)| score(n)))
                .map(|(i, _)| i)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn topo(balance: Balance, weights: &[u32]) -> Topology {
        let replicas: Vec<String> = (0..weights.len()).map(|i| format!("r{i}:1")).collect();
        let mut t = Topology::new("p:1", &replicas);
        for (n, w) in t.nodes[1..].iter_mut().zip(weights) {
            n.settings.weight = *w;
        }
        t.balance = balance;
        t
    }

    fn counts(t: &Topology, picks: usize) -> Vec<usize> {
        let mut c = vec![0; t.nodes.len()];
        for turn in 0..picks {
            if let Some(i) = t.pick_replica(turn, &[]) {
                c[i] += 1;
            }
        }
        c
    }

    #[test]
    fn weights_share_reads() {
        let t = topo(Balance::RoundRobin, &[1, 3]);
        assert_eq!(counts(&t, 400), vec![0, 100, 300]);
        let t = topo(Balance::Random, &[2, 2, 0]);
        // Weight 0 counts as 1: a replica in rotation always gets some reads.
        assert_eq!(counts(&t, 500), vec![0, 200, 200, 100]);
    }

    #[test]
    fn out_of_rotation_paused_and_excluded_get_nothing() {
        let mut t = topo(Balance::RoundRobin, &[1, 1, 1]);
        t.nodes[1].in_rotation = false;
        t.nodes[2].paused = true;
        assert_eq!(counts(&t, 10), vec![0, 0, 0, 10]);
        assert_eq!(t.pick_replica(0, &[3]), None);
    }

    #[test]
    fn least_outstanding_prefers_the_idle_replica() {
        let t = topo(Balance::LeastOutstanding, &[1, 1]);
        t.nodes[1].load.store(5, Ordering::Relaxed);
        assert_eq!(counts(&t, 10), vec![0, 0, 10]);
        t.nodes[2].load.store(5, Ordering::Relaxed);
        assert_eq!(counts(&t, 10), vec![0, 5, 5]);
        // Weight: twice the capacity, twice the load before it stops being preferred.
        let mut t = topo(Balance::LeastOutstanding, &[2, 1]);
        t.nodes[1].settings.weight = 2;
        t.nodes[1].load.store(3, Ordering::Relaxed);
        t.nodes[2].load.store(2, Ordering::Relaxed);
        assert_eq!(counts(&t, 4), vec![0, 4, 0]);
    }
}
