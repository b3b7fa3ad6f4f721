//! The keys under `/pgsplit/<cluster_name>/` and the JSON stored in them (readable with
//! `etcdctl get --prefix /pgsplit/`).
//!
//! | key | lifetime | written by | value |
//! |---|---|---|---|
//! | `members/<instance>` | the instance's lease | that instance | [`Member`] |
//! | `leader` | the leader's lease | the leader (created only if absent) | instance name |
//! | `topology` | permanent | the leader, compare-and-swap on its revision | [`SharedTopology`] |
//! | `request` | permanent until taken | any instance (an operator's command) | [`Request`] |
//! | `paused` | permanent | any instance, compare-and-swap | list of server addresses |

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq)]
pub struct Keys {
    pub prefix: String,
    pub leader: String,
    pub topology: String,
    pub members: String,
    pub request: String,
    pub paused: String,
}

impl Keys {
    pub fn new(cluster: &str) -> Keys {
        let prefix = format!("/pgsplit/{cluster}/");
        Keys {
            leader: format!("{prefix}leader"),
            topology: format!("{prefix}topology"),
            members: format!("{prefix}members/"),
            request: format!("{prefix}request"),
            paused: format!("{prefix}paused"),
            prefix,
        }
    }

    pub fn member(&self, name: &str) -> String {
        format!("{}{name}", self.members)
    }
}

/// The one truth about the cluster. Servers by address: every instance lists the same servers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedTopology {
    /// Changes with every new primary, twice per failover (the barrier, then the new primary).
    pub epoch: u64,
    /// The primary; during a barrier, the one being replaced (no writes go to it).
    pub primary: String,
    pub timeline: u32,
    /// Never routed to again (former primaries, diverged replicas).
    pub fenced: Vec<String>,
    /// A failover in progress: between "epoch N+1, no primary" and "epoch N+2, primary = X".
    #[serde(default)]
    pub barrier: Option<Barrier>,
    /// The instance that wrote this value.
    pub by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Barrier {
    /// The replica chosen for promotion. Fixed once written: a leader that takes over finishes
    /// this promotion, it never chooses another.
    pub candidate: String,
    /// Wall clock (ms since the Unix epoch) when the barrier was published.
    pub since_ms: u64,
    /// WAL the promotion leaves behind, as far as the leader saw.
    #[serde(default)]
    pub loss_bytes: u64,
}

/// One instance's published view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    /// The topology epoch this instance has applied (its acknowledgement of a barrier).
    pub epoch: u64,
    /// The primary answers this instance's health checks.
    pub primary_ok: bool,
    /// Where its clients connect.
    pub listen: String,
}

/// An operator's command given to any instance, carried out by the leader.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// "failover", "promote", "switchover" or "rejoin".
    pub kind: String,
    /// The server it names (address), when it names one.
    pub server: Option<String>,
    /// The instance it was given to.
    pub from: String,
}
