//! The client matrix: real drivers and ORMs through pgsplit, each checking routing as well as
//! results. The drivers are installed into target/clients by scripts/test.

use std::path::PathBuf;
use std::time::Duration;

use crate::check;
use crate::common::{Env, R};

use crate::register;

/// Where this file's tests run in the sequence (see `register!`).
const RANK: u32 = 21;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

async fn run_client(env: &Env, program: &str, args: &[&str], extra_env: &[(&str, String)]) -> R {
    // Every client checks that reads use both replicas: they must both be in rotation (a test
    // before may have restarted a server, and replicas come back after their hold-down).
    env.wait_rotation(&env.proxy, &env.replica_ports()).await?;
    let exe = root().join(program);
    let exe = if exe.exists() { exe } else { PathBuf::from(program) };
    let replicas: Vec<String> = env.replica_ports().iter().map(|p| p.to_string()).collect();
    let mut cmd = tokio::process::Command::new(&exe);
    cmd.args(args)
        .current_dir(root())
        .env("PGSPLIT_PORT", env.proxy.addr.port().to_string())
        .env("PGSPLIT_PRIMARY_PORT", env.primary_port().to_string())
        .env("PGSPLIT_REPLICA_PORTS", replicas.join(","))
        .kill_on_drop(true);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let out = match tokio::time::timeout(Duration::from_secs(240), cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            return Err(format!(
                "cannot run {} ({e}): run scripts/test, which installs the client drivers",
                exe.display()
            )
            .into());
        }
        Err(_) => return Err(format!("{program} {args:?} timed out").into()),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    check!(out.status.success(), "{program} {args:?} failed:\n{stdout}\n{stderr}");
    Ok(())
}

async fn python(env: &Env, script: &str) -> R {
    let python = "target/clients/venv/bin/python";
    check!(root().join(python).exists(), "no Python client venv: run scripts/test, which installs the drivers");
    // The catalog look-ups and settings replay must have settled the replicas first.
    env.caught_up().await?;
    run_client(env, python, &[&format!("tests/clients/python/{script}")], &[]).await
}

/// The web-request-to-worker hand-off with the reported commit position, replicas replaying
/// late (tests/clients/python/test_handoff.py).
pub async fn read_your_writes_handoff(env: &Env) -> R {
    let proxy = env.proxy_with(|c| c.routing.read_your_writes = pgsplit::config::ReadYourWrites::Session).await?;
    let cluster = &env.cluster;
    let delay = |d: &str| {
        let sql = format!("ALTER SYSTEM SET recovery_min_apply_delay = '{d}'");
        tokio::task::block_in_place(|| -> Result<(), String> {
            for i in 1..cluster.nodes.len() {
                cluster.psql(i, &sql)?;
                cluster.psql(i, "SELECT pg_reload_conf()")?;
            }
            Ok(())
        })
    };
    delay("300ms")?;
    let python = "target/clients/venv/bin/python";
    let port = proxy.addr.port().to_string();
    let result = run_client(env, python, &["tests/clients/python/test_handoff.py"], &[("PGSPLIT_PORT", port)]).await;
    delay("0")?;
    result
}
register!(read_your_writes_handoff);

pub async fn psycopg3(env: &Env) -> R {
    python(env, "test_psycopg.py").await
}
register!(psycopg3);

pub async fn psycopg2(env: &Env) -> R {
    python(env, "test_psycopg2.py").await
}
register!(psycopg2);

pub async fn asyncpg(env: &Env) -> R {
    python(env, "test_asyncpg.py").await
}
register!(asyncpg);

pub async fn sqlalchemy_sync_and_asyncio(env: &Env) -> R {
    python(env, "test_sqlalchemy.py").await
}
register!(sqlalchemy_sync_and_asyncio);

pub async fn django_orm_and_seminar_race(env: &Env) -> R {
    python(env, "test_django.py").await
}
register!(django_orm_and_seminar_race);

pub async fn node_postgres(env: &Env) -> R {
    let modules = root().join("target/clients/node/node_modules");
    check!(modules.exists(), "no node_modules: run scripts/test, which installs the drivers");
    run_client(env, "node", &["tests/clients/node/test_pg.js"], &[("NODE_PATH", modules.display().to_string())]).await
}
register!(node_postgres);

pub async fn jdbc(env: &Env) -> R {
    let jar = "/usr/share/java/postgresql.jar";
    check!(std::path::Path::new(jar).exists(), "no pgJDBC: run scripts/test (apt-get install libpostgresql-jdbc-java)");
    run_client(env, "java", &["-cp", jar, "tests/clients/java/ClientTest.java"], &[]).await
}
register!(jdbc);

pub async fn sqlx_pool(env: &Env) -> R {
    use sqlx::Row;
    use sqlx::postgres::PgPoolOptions;
    use std::collections::BTreeSet;
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", env.proxy.addr.port());
    let pool = PgPoolOptions::new().max_connections(4).connect(&url).await?;
    // sqlx prepares every query as a named statement and keeps it in a per-connection cache:
    // later executions only Bind, wherever pgsplit runs them.
    let mut ports = BTreeSet::new();
    for i in 0..30 {
        let row = sqlx::query("SELECT $1::int4 + 1, inet_server_port()").bind(i).fetch_one(&pool).await?;
        check!(row.get::<i32, _>(0) == i + 1, "wrong result");
        ports.insert(row.get::<i32, _>(1));
    }
    let replicas: BTreeSet<i32> = env.replica_ports().into_iter().collect();
    check!(ports == replicas, "sqlx reads ran on {ports:?}");
    let mut tx = pool.begin().await?;
    let p: i32 = sqlx::query("SELECT inet_server_port()").fetch_one(&mut *tx).await?.get(0);
    check!(p == env.primary_port(), "read in a transaction ran on {p}");
    sqlx::query("INSERT INTO t (v) VALUES ($1)").bind(11).execute(&mut *tx).await?;
    let locked: i32 = sqlx::query("SELECT inet_server_port() FROM t WHERE id = $1 FOR UPDATE")
        .bind(1)
        .fetch_one(&mut *tx)
        .await?
        .get(0);
    check!(locked == env.primary_port(), "FOR UPDATE ran on {locked}");
    tx.commit().await?;
    let w: i32 = sqlx::query("INSERT INTO t (v) VALUES ($1) RETURNING inet_server_port()")
        .bind(12)
        .fetch_one(&pool)
        .await?
        .get(0);
    check!(w == env.primary_port(), "INSERT ran on {w}");
    let e = sqlx::query("SELECT 1/0").execute(&pool).await;
    check!(e.is_err(), "division by zero");
    let v: i32 = sqlx::query("SELECT 7").fetch_one(&pool).await?.get(0);
    check!(v == 7, "pool unusable after an error");
    pool.close().await;
    Ok(())
}
register!(sqlx_pool, 23);
