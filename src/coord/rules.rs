//! The coordination rules, pure and table-tested. With the failover rules (`failover/decide.rs`,
//! which take the peers' verdict as rule 5b) they are every decision several instances make:
//!
//! 1. Writes go out only while this instance's lease is healthy (renewed within half its TTL:
//!    before etcd lets it expire and a peer may act without it), after it has applied a
//!    topology from etcd, and outside a failover barrier. Otherwise they wait, then fail.
//! 2. Only the leader promotes, and only when a strict majority of the live instances (those
//!    whose member key exists) find the primary unreachable.
//! 3. The leader promotes only after every live instance has acknowledged the barrier epoch
//!    (an instance that cannot has lost etcd and so has stopped writing by rule 1, and its key
//!    vanishes with its lease).
//! 4. A barrier names its candidate once; a leader that finds one finishes that promotion and
//!    never chooses another.
//! 5. The shared topology names servers by address; an instance that does not know an address
//!    it names refuses the topology and keeps writes stopped (it cannot know where they go).

use std::time::Duration;

use super::values::{Member, SharedTopology};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Open,
    /// No topology read from etcd yet (just started, or the last one was refused).
    NotSynced,
    /// A failover is in progress.
    Barrier,
    /// The lease has not been renewed for half its TTL (etcd unreachable or without quorum).
    EtcdLost,
}

impl Gate {
    pub fn as_str(self) -> &'static str {
        match self {
            Gate::Open => "writes open",
            Gate::NotSynced => "writes suspended: no topology read from etcd yet",
            Gate::Barrier => "writes suspended: a failover is in progress",
            Gate::EtcdLost => "writes suspended: etcd lost (lease not renewed)",
        }
    }
}

pub struct GateInput {
    pub synced: bool,
    pub barrier: bool,
    /// Time since the lease was last renewed; None: no lease.
    pub since_lease_ok: Option<Duration>,
    pub ttl: Duration,
}

/// Rule 1.
pub fn write_gate(g: &GateInput) -> Gate {
    match g.since_lease_ok {
        None => Gate::EtcdLost,
        Some(d) if d >= g.ttl / 2 => Gate::EtcdLost,
        _ if !g.synced => Gate::NotSynced,
        _ if g.barrier => Gate::Barrier,
        _ => Gate::Open,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peers {
    pub live: usize,
    pub down: usize,
}

pub fn peers(members: &[Member]) -> Peers {
    Peers { live: members.len(), down: members.iter().filter(|m| !m.primary_ok).count() }
}

/// Rule 2: a strict majority of the live instances find the primary unreachable.
pub fn majority_down(p: Peers) -> bool {
    p.live > 0 && p.down * 2 > p.live
}

/// Rule 3: the live instances that have not yet applied `epoch`.
pub fn unacknowledged(members: &[Member], epoch: u64) -> Vec<String> {
    members.iter().filter(|m| m.epoch < epoch).map(|m| m.name.clone()).collect()
}

/// The shared topology in this instance's server indices.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    pub primary: usize,
    pub fenced: Vec<usize>,
    pub candidate: Option<usize>,
}

/// Rule 5.
pub fn map(t: &SharedTopology, addrs: &[&str]) -> Result<Mapped, String> {
    let find = |a: &str| addrs.iter().position(|x| *x == a).ok_or_else(|| a.to_string());
    let unknown = |a: String| format!("etcd's topology names server {a}, which this instance does not list");
    let primary = find(&t.primary).map_err(unknown)?;
    let mut fenced = Vec::new();
    for f in &t.fenced {
        fenced.push(find(f).map_err(unknown)?);
    }
    let candidate = match &t.barrier {
        Some(b) => Some(find(&b.candidate).map_err(unknown)?),
        None => None,
    };
    Ok(Mapped { primary, fenced, candidate })
}

/// Rule 4: the promotion a leader must finish, given the shared topology and what its own
/// failover loop is doing (`promoting`: the candidate it already drives).
pub fn to_finish(mapped: &Mapped, promoting: Option<usize>) -> Option<usize> {
    match (mapped.candidate, promoting) {
        (Some(c), Some(p)) if c == p => None,
        (Some(c), _) => Some(c),
        (None, _) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::values::Barrier;
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    fn gate(synced: bool, barrier: bool, since: Option<u64>) -> Gate {
        write_gate(&GateInput { synced, barrier, since_lease_ok: since.map(Duration::from_millis), ttl: TTL })
    }

    #[test]
    fn writes_need_a_fresh_lease_a_topology_and_no_barrier() {
        assert_eq!(gate(true, false, Some(0)), Gate::Open);
        assert_eq!(gate(true, false, Some(4_999)), Gate::Open);
        assert_eq!(gate(true, false, Some(5_000)), Gate::EtcdLost, "closed at half the TTL, before expiry");
        assert_eq!(gate(true, false, None), Gate::EtcdLost);
        assert_eq!(gate(false, false, Some(0)), Gate::NotSynced);
        assert_eq!(gate(true, true, Some(0)), Gate::Barrier);
        assert_eq!(gate(false, true, None), Gate::EtcdLost, "a lost lease wins over everything");
    }

    fn member(name: &str, epoch: u64, primary_ok: bool) -> Member {
        Member { name: name.into(), epoch, primary_ok, listen: String::new() }
    }

    #[test]
    fn a_strict_majority_of_live_instances_must_find_the_primary_down() {
        let cases: &[(&[bool], bool)] = &[
            (&[false, false, false], true),
            (&[false, false, true], true),
            (&[false, true, true], false),
            (&[false, true], false),
            (&[false, false], true),
            (&[false], true),
            (&[true], false),
            (&[], false),
        ];
        for (views, want) in cases {
            let ms: Vec<Member> = views.iter().enumerate().map(|(i, ok)| member(&format!("i{i}"), 1, *ok)).collect();
            assert_eq!(majority_down(peers(&ms)), *want, "{views:?}");
        }
    }

    #[test]
    fn the_barrier_waits_for_every_live_instance() {
        let ms = vec![member("a", 3, false), member("b", 2, false), member("c", 4, true)];
        assert_eq!(unacknowledged(&ms, 3), vec!["b".to_string()]);
        assert!(unacknowledged(&ms, 2).is_empty());
        assert!(unacknowledged(&[], 9).is_empty(), "no live instance: nobody to wait for");
    }

    fn topo(primary: &str, fenced: &[&str], candidate: Option<&str>) -> SharedTopology {
        SharedTopology {
            epoch: 5,
            primary: primary.into(),
            timeline: 2,
            fenced: fenced.iter().map(|s| s.to_string()).collect(),
            barrier: candidate.map(|c| Barrier { candidate: c.into(), since_ms: 0, loss_bytes: 0 }),
            by: "a".into(),
        }
    }

    #[test]
    fn topology_maps_by_address_and_unknown_servers_are_refused() {
        let addrs = ["p:1", "r:1", "r:2"];
        let m = map(&topo("r:1", &["p:1"], None), &addrs).unwrap();
        assert_eq!(m, Mapped { primary: 1, fenced: vec![0], candidate: None });
        let m = map(&topo("p:1", &[], Some("r:2")), &addrs).unwrap();
        assert_eq!(m.candidate, Some(2));
        assert!(map(&topo("x:9", &[], None), &addrs).unwrap_err().contains("x:9"));
        assert!(map(&topo("p:1", &["x:9"], None), &addrs).is_err());
        assert!(map(&topo("p:1", &[], Some("x:9")), &addrs).is_err());
    }

    #[test]
    fn a_new_leader_finishes_the_promotion_it_finds() {
        let m = Mapped { primary: 0, fenced: vec![], candidate: Some(2) };
        assert_eq!(to_finish(&m, None), Some(2));
        assert_eq!(to_finish(&m, Some(2)), None, "already driving it");
        assert_eq!(to_finish(&m, Some(1)), Some(2), "the barrier's candidate wins over a local choice");
        assert_eq!(to_finish(&Mapped { candidate: None, ..m }, None), None);
    }
}
