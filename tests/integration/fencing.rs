//! Fencing and the failover state: nothing pgsplit holds writes on a former primary, and a
//! failover's topology is never lost nor applied unrecorded.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pgsplit::config::FailoverMode;
use pgsplit::proxy::Proxy;

use crate::check;
use crate::common::{Env, R, connect};
use crate::own_cluster::{config, own_cluster, postmaster_pid};

use crate::register;

/// Where this file's tests run in the sequence (see `register!`).
const RANK: u32 = 19;

/// Sessions that hold a connection to the primary (pinned by LISTEN with
/// `default_transaction_read_only = off` and an application_name like pgsplit's own, by a
/// temporary table, by an advisory lock, or in an open transaction) never write on it once
/// another server is the primary: after SWITCHOVER, and after PROMOTE with the old primary
/// still up. Their INSERT fails (FATAL for the pinned, 40001 for the transaction) and the old
/// primary's log shows it never ran there.
pub async fn held_sessions_never_write_on_a_former_primary(_env: &Env) -> R {
    let (_base, cluster) = own_cluster("pgsplit-held").await?;
    for i in 0..3 {
        let conf = cluster.nodes[i].dir.join("postgresql.conf");
        let mut f = std::fs::OpenOptions::new().append(true).open(&conf)?;
        use std::io::Write;
        writeln!(f, "log_statement = 'all'\nlog_line_prefix = '%m [%p] %a '")?;
        tokio::task::block_in_place(|| cluster.psql(i, "SELECT pg_reload_conf()"))?;
    }
    let mut cfg = config(&cluster, "");
    cfg.failover.mode = FailoverMode::Manual;
    let proxy = Proxy::start(cfg).await?;
    let port = proxy.addr.port();
    let conn = |app: &str| format!("host=127.0.0.1 port={port} user=postgres dbname=postgres application_name={app}");
    let setup = connect(&conn("setup")).await?;
    setup.batch_execute("CREATE TABLE held (who text)").await?;
    tokio::task::block_in_place(|| cluster.wait_caught_up())?;
    let admin = connect(&format!("host=127.0.0.1 port={port} user=postgres dbname=pgsplit")).await?;

    for (round, (command, old, new)) in [("SWITCHOVER TO", 0usize, 1usize), ("PROMOTE", 1, 2)].into_iter().enumerate() {
        let kinds = [
            ("listen", "SET default_transaction_read_only = off; LISTEN chan"),
            ("temp", "CREATE TEMP TABLE tmp (x int)"),
            ("lock", "SELECT pg_advisory_lock(1)"),
            ("tx", "BEGIN; INSERT INTO held VALUES ('tx-begun')"),
        ];
        let mut sessions = Vec::new();
        for (kind, sql) in kinds {
            let c = connect(&conn(&format!("pgsplit-{kind}"))).await?;
            c.batch_execute(sql).await?;
            sessions.push((kind, c));
        }
        let target = cluster.nodes[new].addr();
        admin.simple_query(&format!("{command} {target}")).await?;
        let t0 = Instant::now();
        while proxy.shared.cluster.load().primary() != new {
            check!(t0.elapsed() < Duration::from_secs(30), "{command} {target} did not take effect");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut outcomes = Vec::new();
        for (kind, c) in &sessions {
            let marker = format!("r{round}-{kind}");
            let r = c.simple_query(&format!("INSERT INTO held VALUES ('{marker}')")).await;
            outcomes.push(format!(
                "{kind}: {}",
                match &r {
                    Ok(_) => "INSERT succeeded".to_string(),
                    Err(e) => format!(
                        "{} {}",
                        crate::common::sqlstate(e),
                        e.as_db_error().map(|d| d.message()).unwrap_or("(closed)")
                    ),
                }
            ));
            check!(r.is_err(), "{command}: the {kind} session's INSERT succeeded");
        }
        println!("    {command} with sessions held on the old primary: {outcomes:?}");
        // Nothing reached the old primary after the new one took writes: its log has none of
        // the markers, and neither server has the rows.
        let log = std::fs::read_to_string(cluster.base.join(format!("{}.log", cluster.nodes[old].name)))?;
        check!(log.contains("statement:"), "{command}: the old primary logs no statements");
        let leaked: Vec<&str> = log.lines().filter(|l| l.contains(&format!("'r{round}-"))).collect();
        check!(leaked.is_empty(), "{command}: the old primary ran {leaked:?}");
        for node in [old, new] {
            let n = tokio::task::block_in_place(|| {
                cluster.psql(node, &format!("SELECT count(*) FROM held WHERE who LIKE 'r{round}-%'"))
            })?;
            check!(n.trim() == "0", "{command}: node {node} has {n} rows from held sessions");
        }
        // New sessions write on the new primary.
        let c = connect(&conn("after")).await?;
        let p = crate::common::port_of(&c, "INSERT INTO held VALUES ('after') RETURNING inet_server_port()").await?;
        check!(p == cluster.nodes[new].port as i32, "{command}: a new write ran on {p}");
    }
    proxy.stop();
    drop(cluster);
    Ok(())
}
register!(held_sessions_never_write_on_a_former_primary);

/// The failover state cannot be lost: with failover = "auto" pgsplit refuses to start on a
/// state file it cannot read, a corrupt one, one naming servers it is not configured with, a
/// state directory it cannot create, or no state directory at all, each with the file and
/// what to do; and a failover whose new topology cannot be written holds writes (57P03 after
/// failover_wait_ms) instead of applying it, until it can be written.
pub async fn failover_state_cannot_be_lost(env: &Env) -> R {
    let base = std::env::temp_dir().join(format!("pgsplit-statefile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base)?;
    let with_dir = |dir: &std::path::Path| {
        let mut c = crate::common::base_config(&env.cluster);
        c.failover.mode = FailoverMode::Auto;
        c.failover.state_dir = dir.display().to_string();
        c
    };
    let refused = |name: &str, r: Result<Proxy, String>, want: &str| -> R {
        match r {
            Ok(p) => {
                p.stop();
                Err(format!("{name}: pgsplit started").into())
            }
            Err(e) => {
                println!("    {name}: {e}");
                check!(e.contains(want), "{name}: {e}");
                Ok(())
            }
        }
    };
    let corrupt = base.join("corrupt");
    std::fs::create_dir_all(&corrupt)?;
    std::fs::write(corrupt.join("pgsplit-state.toml"), "epoch = 3\nprimary = \"127.0")?;
    refused("truncated state file", Proxy::start(with_dir(&corrupt)).await, "corrupt")?;
    let unknown = base.join("unknown");
    std::fs::create_dir_all(&unknown)?;
    std::fs::write(
        unknown.join("pgsplit-state.toml"),
        "epoch = 2\nprimary = \"127.0.0.1:1\"\ntimeline = 2\nfenced = []\n",
    )?;
    refused(
        "a state file naming an unknown server",
        Proxy::start(with_dir(&unknown)).await,
        "not among the configured",
    )?;
    let unreadable = base.join("unreadable");
    std::fs::create_dir_all(unreadable.join("pgsplit-state.toml"))?;
    refused("an unreadable state file", Proxy::start(with_dir(&unreadable)).await, "cannot be read")?;
    std::fs::write(base.join("a-file"), "")?;
    refused(
        "a state directory that cannot be made",
        Proxy::start(with_dir(&base.join("a-file/state"))).await,
        "state_dir",
    )?;
    refused("no state directory", Proxy::start(with_dir(std::path::Path::new(""))).await, "state_dir is empty")?;

    // A failover whose topology cannot be written.
    let (_cbase, cluster) = own_cluster("pgsplit-unrecorded").await?;
    let dir = base.join("blocked");
    let mut cfg = config(&cluster, &dir.display().to_string());
    cfg.failover.failover_wait_ms = 1000;
    let proxy = Proxy::start(cfg).await?;
    // The temporary file the save writes first cannot be created (a directory is in its way;
    // permissions stop no one running as root).
    let tmp = dir.join("pgsplit-state.toml.tmp");
    std::fs::create_dir_all(&tmp)?;
    let conn = format!("host=127.0.0.1 port={} user=postgres dbname=postgres", proxy.addr.port());
    let c = connect(&conn).await?;
    c.batch_execute("CREATE TABLE unrecorded (id int)").await?;
    tokio::task::block_in_place(|| cluster.wait_caught_up())?;
    let pid = postmaster_pid(&cluster, 0)?;
    tokio::process::Command::new("kill").args(["-9", &pid]).status().await?;
    let t0 = Instant::now();
    while !proxy.shared.failover.unrecorded.load(Ordering::SeqCst) {
        check!(t0.elapsed() < Duration::from_secs(30), "the failover never tried to record its topology");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check!(proxy.shared.cluster.load().primary() == 0, "an unrecorded topology was applied");
    let e = c.execute("INSERT INTO unrecorded VALUES (1)", &[]).await.err().ok_or("a write went through")?;
    let msg = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_default();
    println!("    a failover that cannot write its state file: writes get {} {msg:?}", crate::common::sqlstate(&e));
    check!(crate::common::sqlstate(&e) == "57P03" && msg.contains("state_dir"), "a write got {e:?}");
    std::fs::remove_dir_all(&tmp)?;
    let t1 = Instant::now();
    while proxy.shared.cluster.load().primary() == 0 {
        check!(t1.elapsed() < Duration::from_secs(30), "the topology was never recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let p = crate::common::port_of(&c, "INSERT INTO unrecorded VALUES (2) RETURNING inet_server_port()").await?;
    let saved = std::fs::read_to_string(dir.join("pgsplit-state.toml"))?;
    println!("    recorded {:.2} s after the way was cleared; the write ran on {p}", t1.elapsed().as_secs_f64());
    check!(saved.contains(&cluster.nodes[proxy.shared.cluster.load().primary()].addr()), "state file: {saved}");
    proxy.stop();
    drop(cluster);
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}
register!(failover_state_cannot_be_lost);
