//! Self-checks of what pgsplit knows as data: the routing corpus against a real standby, and
//! the audited list of built-in functions against pg_proc.

use std::collections::HashMap;

use crate::check;
use crate::common::{Env, R};
use crate::differential::{login, simple};

use crate::register;

/// Where this file's tests run in the sequence (see `register!`).
const RANK: u32 = 3;

const ROUTING: &str = include_str!("../corpus/routing.tsv");

/// The outcome of one simple-protocol statement: "ok" or the SQLSTATE of its first error.
async fn outcome(s: &mut tokio::net::TcpStream, sql: &str) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let msgs = simple(s, sql).await?;
    // Leave the session as it was: out of any transaction, settings and roles reset.
    // (RESET ALL first: a standby refuses DISCARD ALL itself while the session's default
    // isolation is SERIALIZABLE.)
    simple(s, "ROLLBACK").await?;
    simple(s, "RESET ALL").await?;
    simple(s, "DISCARD ALL").await?;
    Ok(msgs
        .iter()
        .find(|(t, _)| *t == b'E')
        .map(|(_, code)| String::from_utf8_lossy(code).into_owned())
        .unwrap_or_else(|| "ok".into()))
}

/// Every statement the corpus says a replica may run (replica and any rows) runs directly on
/// the primary and on a standby: the standby must not refuse what the primary accepts. This is
/// what makes "a standby's refusal" impossible to regress: a new row a standby rejects fails here.
pub async fn standby_accepts_what_the_corpus_sends_it(env: &Env) -> R {
    let mut primary = login(env.cluster.primary().port).await?;
    let mut standby = login(env.cluster.nodes[1].port).await?;
    let rows: Vec<&str> =
        ROUTING.lines().filter_map(|l| l.strip_prefix("replica\t").or_else(|| l.strip_prefix("any\t"))).collect();
    check!(rows.len() > 200, "only {} replica-safe statements in the corpus", rows.len());
    let (mut refused, mut both_fail) = (Vec::new(), Vec::new());
    for sql in &rows {
        let on_primary = outcome(&mut primary, sql).await?;
        let on_standby = outcome(&mut standby, sql).await?;
        if on_primary != on_standby {
            refused.push(format!("{sql}: primary {on_primary}, standby {on_standby}"));
        } else if on_primary != "ok" {
            both_fail.push(format!("{on_primary} {sql}"));
        }
    }
    println!(
        "    corpus: {} replica-safe statements checked on a standby, {} fail alike on both (no transaction, cursor or parameter there)",
        rows.len(),
        both_fail.len()
    );
    for l in &both_fail {
        println!("      {l}");
    }
    check!(refused.is_empty(), "a standby answers differently:\n{}", refused.join("\n"));
    // Statements that fail everywhere prove little: only those that need a context may.
    let unexpected: Vec<&String> = both_fail
        .iter()
        .filter(|l| !["25P01", "34000", "26000", "42P02", "25001", "0A000", "22023"].iter().any(|c| l.starts_with(c)))
        .collect();
    check!(unexpected.is_empty(), "corpus statements that fail on both servers: {unexpected:#?}");
    Ok(())
}
register!(standby_accepts_what_the_corpus_sends_it);

/// The audited verdicts (src/sql/builtin_functions.tsv) cover every function of the running
/// server's pg_catalog, with the volatility it has: a new PostgreSQL version with new
/// functions fails here until they are audited.
pub async fn builtin_function_audit_matches_pg_proc(env: &Env) -> R {
    let c = crate::common::connect(&env.conn_string(env.cluster.primary().port)).await?;
    let rows = c
        .query(
            "SELECT proname::text, CASE WHEN bool_or(provolatile = 'v') THEN 'volatile' \
               WHEN bool_or(provolatile = 's') THEN 'stable' ELSE 'immutable' END \
             FROM pg_proc WHERE pronamespace = 'pg_catalog'::regnamespace GROUP BY proname",
            &[],
        )
        .await?;
    let audited: HashMap<&str, &str> = pgsplit::sql::functions::audited().collect();
    let mut problems = Vec::new();
    for r in &rows {
        let (name, volatility): (String, String) = (r.get(0), r.get(1));
        match audited.get(name.as_str()) {
            None => problems.push(format!("{name} ({volatility}) is not audited")),
            Some(v) if *v != volatility => problems.push(format!("{name} is {volatility}, audited as {v}")),
            _ => {}
        }
    }
    println!("    functions: {} pg_catalog names on the server, {} audited", rows.len(), audited.len());
    check!(problems.is_empty(), "builtin_functions.tsv is out of date:\n{}", problems.join("\n"));
    Ok(())
}
register!(builtin_function_audit_matches_pg_proc);

/// The audited views (src/sql/server_local_views.tsv) cover every view of the running server's
/// pg_catalog: a new PostgreSQL version with new views fails here until they are audited. The
/// verdicts hold on the cluster: a view audited `local` is read on the primary through pgsplit,
/// one audited `same` on a replica, and `/* pgsplit:replica */` sends a local one to a replica.
pub async fn server_local_view_audit_matches_pg_views(env: &Env) -> R {
    let c = crate::common::connect(&env.conn_string(env.cluster.primary().port)).await?;
    let rows = c.query("SELECT viewname::text FROM pg_views WHERE schemaname = 'pg_catalog'", &[]).await?;
    let audited: HashMap<&str, &str> = pgsplit::sql::functions::audited_views().collect();
    let missing: Vec<String> =
        rows.iter().map(|r| r.get::<_, String>(0)).filter(|v| !audited.contains_key(v.as_str())).collect();
    let local = audited.values().filter(|v| **v == "local").count();
    println!(
        "    views: {} pg_catalog views on the server, {} audited ({local} local, {} same)",
        rows.len(),
        audited.len(),
        audited.len() - local
    );
    check!(missing.is_empty(), "server_local_views.tsv lacks: {}", missing.join(", "));
    let p = env.client().await?;
    let primary = env.primary_port();
    for (sql, on_primary) in [
        ("SELECT inet_server_port() FROM pg_stat_activity LIMIT 1", true),
        ("SELECT inet_server_port(), count(*) FROM pg_locks", true),
        ("SELECT inet_server_port(), pg_backend_pid()", true),
        ("SELECT inet_server_port(), count(*) FROM pg_catalog.pg_prepared_xacts", true),
        ("SELECT inet_server_port(), count(*) FROM pg_tables", false),
        ("/* pgsplit:replica */ SELECT inet_server_port(), count(*) FROM pg_stat_activity", false),
        ("/* pgsplit:replica */ SELECT inet_server_port(), status FROM pg_stat_wal_receiver", false),
    ] {
        let port = crate::common::port_of(&p, sql).await?;
        check!((port == primary) == on_primary, "{sql} ran on {port} (primary {primary})");
    }
    Ok(())
}
register!(server_local_view_audit_matches_pg_views);
