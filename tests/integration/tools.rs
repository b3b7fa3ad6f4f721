//! Real libpq clients: psql scripts and pgbench in every protocol mode.

use crate::check;
use crate::common::{Env, R};

use crate::register;

/// Where this file's tests run in the sequence (see `register!`).
const RANK: u32 = 24;

async fn run(
    cmd: &str,
    args: &[&str],
    env: &Env,
) -> Result<(String, String), Box<dyn std::error::Error + Send + Sync>> {
    let out = tokio::process::Command::new(cmd)
        .args(args)
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", env.proxy.addr.port().to_string())
        .env("PGUSER", "postgres")
        .env("PGDATABASE", "postgres")
        .output()
        .await?;
    let (o, e) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    check!(out.status.success(), "{cmd} {args:?} failed: {o}\n{e}");
    Ok((o, e))
}

pub async fn psql_script(env: &Env) -> R {
    let dir = std::env::temp_dir().join(format!("pgsplit-psql-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let csv = dir.join("in.csv");
    std::fs::write(&csv, "1,one\n2,two\n3,three\n")?;
    let out_csv = dir.join("out.csv");
    let script = format!(
        "\\set ON_ERROR_STOP 1
CREATE TABLE psql_probe (id int PRIMARY KEY, name text);
\\copy psql_probe FROM '{}' WITH (FORMAT csv)
BEGIN;
UPDATE psql_probe SET name = upper(name) WHERE id = 2;
SELECT name FROM psql_probe WHERE id = 2 \\gset
COMMIT;
SELECT :'name' AS updated;
\\copy (SELECT * FROM psql_probe ORDER BY id) TO '{}' WITH (FORMAT csv)
SELECT count(*) AS n FROM psql_probe;
DROP TABLE psql_probe;
",
        csv.display(),
        out_csv.display()
    );
    let file = dir.join("script.sql");
    std::fs::write(&file, script)?;
    let (out, _) = run("psql", &["-X", "-A", "-t", "-f", file.to_str().unwrap_or_default()], env).await?;
    check!(out.contains("TWO"), "psql output: {out}");
    let copied = std::fs::read_to_string(&out_csv)?;
    check!(copied.lines().count() == 3, "\\copy out: {copied}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
register!(psql_script);

pub async fn psql_watch_repeats(env: &Env) -> R {
    // \watch re-runs the query every interval until interrupted (psql 15 has no count).
    let file = std::env::temp_dir().join(format!("pgsplit-watch-{}.sql", std::process::id()));
    std::fs::write(&file, "SELECT 'tick', inet_server_port() \\watch 0.2\n")?;
    let mut child = tokio::process::Command::new("psql")
        .args(["-X", "-A", "-t", "-f"])
        .arg(&file)
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", env.proxy.addr.port().to_string())
        .env("PGUSER", "postgres")
        .env("PGDATABASE", "postgres")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    tokio::time::sleep(std::time::Duration::from_millis(2000)).await;
    child.start_kill()?;
    let out = child.wait_with_output().await?;
    let _ = std::fs::remove_file(&file);
    let text = String::from_utf8_lossy(&out.stdout);
    let ticks = text.lines().filter(|l| l.starts_with("tick|")).count();
    check!(ticks >= 3, "\\watch ran {ticks} times: {text}");
    for l in text.lines().filter(|l| l.starts_with("tick|")) {
        let port: i32 = l.trim_start_matches("tick|").parse()?;
        check!(env.replica_ports().contains(&port), "\\watch read ran on {port}");
    }
    Ok(())
}
register!(psql_watch_repeats);

pub async fn pgbench_all_modes(env: &Env) -> R {
    run("pgbench", &["-i", "-q", "-s", "1"], env).await?;
    env.caught_up().await?;
    for mode in ["simple", "extended", "prepared"] {
        for select_only in [false, true] {
            let mut args = vec!["-M", mode, "-c", "4", "-j", "2", "-t", "200", "-n"];
            if select_only {
                args.push("-S");
            }
            let (out, err) = run("pgbench", &args, env).await?;
            check!(out.contains("number of failed transactions: 0"), "pgbench {args:?}: {out}{err}");
            check!(!err.contains("error"), "pgbench {args:?} reported errors: {err}");
            check!(out.contains("number of transactions actually processed: 800/800"), "pgbench {args:?}: {out}");
        }
    }
    Ok(())
}
register!(pgbench_all_modes);

/// Sessions spread over two shards (`runtime.rs`), as the binary does on two cores: new clients
/// go to the shard with fewer, each session works whichever shard opened the pooled server
/// connection it gets (a connection opened on the other shard is used across threads), and a
/// session's end frees its place. With read-your-writes on, as by default.
pub async fn sessions_spread_over_the_shards(env: &Env) -> R {
    let mut config = crate::common::base_config(&env.cluster);
    config.routing.read_your_writes = pgsplit::config::ReadYourWrites::Session;
    let proxy =
        pgsplit::proxy::Proxy::start_on(config, pgsplit::config::Source::none(), None, Some(env.shards.clone()))
            .await?;
    let port = proxy.addr.port();
    no_sessions_on_the_shards(env, "earlier sessions").await?;
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(crate::common::connect(&env.conn_string(port)).await?);
    }
    check!(env.shards.clients() == vec![3, 3], "6 clients on the shards: {:?}", env.shards.clients());
    let primary = env.primary_port();
    let work = clients.iter().enumerate().map(|(i, c)| async move {
        for round in 0..20 {
            let v = 1_000_000 + (i * 100 + round) as i32;
            let row = c.query_one("INSERT INTO t (v) VALUES ($1) RETURNING id", &[&v]).await?;
            let id: i32 = row.get(0);
            // Read-your-writes, wherever the read goes.
            let back: i32 = c.query_one("SELECT v FROM t WHERE id = $1", &[&id]).await?.get(0);
            check!(back == v, "client {i} read {back} for its {v}");
            let tx = c.simple_query("BEGIN; SELECT inet_server_port(); COMMIT").await?;
            let port = tx.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(|p| p.parse::<i32>().ok()),
                _ => None,
            });
            check!(port == Some(primary), "a transaction ran on {port:?}, not the primary {primary}");
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    });
    for r in futures_util::future::join_all(work).await {
        r?;
    }
    clients[0].batch_execute("DELETE FROM t WHERE v >= 1000000").await?;
    drop(clients);
    no_sessions_on_the_shards(env, "ended sessions").await?;
    println!("    6 clients over 2 shards: 3 and 3; 120 writes, each read back; 120 transactions on the primary");
    Ok(())
}
register!(sessions_spread_over_the_shards);

/// Waits (up to 10 s) until no session is counted on the shards.
async fn no_sessions_on_the_shards(env: &Env, what: &str) -> R {
    let t0 = std::time::Instant::now();
    while env.shards.clients().iter().sum::<usize>() > 0 {
        check!(t0.elapsed() < std::time::Duration::from_secs(10), "{what} still counted: {:?}", env.shards.clients());
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    Ok(())
}
