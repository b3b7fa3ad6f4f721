//! Failover timing over several fresh clusters (kill -9 of the primary): printed, median and
//! max; only correctness is asserted. With etcd, coordination.rs makes the same runs beside
//! three coordinated instances.

use std::time::{Duration, Instant};

use pgsplit::localcluster::LocalCluster;
use pgsplit::proxy::Proxy;

use crate::check;
use crate::common::{Env, R, connect};
use crate::own_cluster::{config, postmaster_pid};

use crate::register;

/// Where this file's tests run in the sequence (see `register!`).
const RANK: u32 = 25;

/// Kill -9 and time to the new primary and to the first write, over several runs (fresh
/// clusters): printed, median and max; only correctness is asserted.
pub async fn failover_times_over_several_runs(_env: &Env) -> R {
    let mut to_primary = Vec::new();
    let mut to_write = Vec::new();
    for run in 0..3 {
        let base = std::env::temp_dir().join(format!("pgsplit-runs-{}-{run}", std::process::id()));
        let cluster = tokio::task::spawn_blocking({
            let base = base.clone();
            move || LocalCluster::start(&base, 2)
        })
        .await??;
        let proxy = Proxy::start(config(&cluster, "")).await?;
        let conn = format!("host=127.0.0.1 port={} user=postgres dbname=postgres", proxy.addr.port());
        let c = connect(&conn).await?;
        c.batch_execute("CREATE TABLE runs (id serial PRIMARY KEY)").await?;
        tokio::task::block_in_place(|| cluster.wait_caught_up())?;
        let w = connect(&conn).await?;
        let pid = postmaster_pid(&cluster, 0)?;
        tokio::process::Command::new("kill").args(["-9", &pid]).status().await?;
        let killed = Instant::now();
        // Wait for the topology to name a new primary.
        while proxy.shared.cluster.load().primary() == 0 {
            check!(killed.elapsed() < Duration::from_secs(60), "run {run}: no new primary");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A client that writes until one goes through on it (each write waits up to failover_wait).
        let mut wrote = None;
        while killed.elapsed() < Duration::from_secs(60) {
            if let Ok(row) = w.query_one("INSERT INTO runs DEFAULT VALUES RETURNING inet_server_port()", &[]).await
                && row.get::<_, i32>(0) != cluster.nodes[0].port as i32
            {
                wrote = Some(killed.elapsed());
                break;
            }
        }
        let primary = proxy.shared.metrics.last_failover_seconds.get();
        let wrote = wrote.ok_or("no write after the failover")?;
        to_primary.push(primary);
        to_write.push(wrote.as_secs_f64());
        proxy.stop();
        drop(cluster);
    }
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        (v[v.len() / 2], v[v.len() - 1])
    };
    let ((pm, px), (wm, wx)) = (stats(&mut to_primary), stats(&mut to_write));
    println!(
        "    {} kill -9 runs: first failed check to new primary median {pm:.2} s (max {px:.2}); kill to first write median {wm:.2} s (max {wx:.2})",
        to_write.len()
    );
    Ok(())
}
register!(failover_times_over_several_runs);
