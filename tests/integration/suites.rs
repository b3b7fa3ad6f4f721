//! Real applications' own test suites, run directly on the primary and through pgsplit in its
//! default configuration, compared test by test: a test that passes directly and fails through
//! pgsplit is pgsplit's bug. The suites are those of the client matrix's versions, from their
//! source releases on PyPI: Django's (CI runs the labels below; `scripts/django-suite` the
//! whole suite) and SQLAlchemy's (CI runs the files below: its PostgreSQL dialect, reflection,
//! two-phase commit, transactions in Core and the ORM).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::check;
use crate::common::{Env, R};

use crate::register;

/// Where this file's tests run in the sequence (see `register!`).
const RANK: u32 = 22;

/// The labels CI runs (`PGSPLIT_DJANGO_LABELS` overrides; `all` is the whole suite).
const CI_LABELS: &str = "transactions select_for_update backends queries model_fields postgres_tests";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> PathBuf {
    root().join("target/clients/venv/bin/python")
}

/// SQLAlchemy's test files CI runs (`PGSPLIT_SQLALCHEMY_TESTS` overrides).
const SQLALCHEMY_TESTS: &str = "test/dialect/postgresql/test_dialect.py test/dialect/postgresql/test_query.py \
     test/dialect/postgresql/test_reflection.py test/dialect/postgresql/test_on_conflict.py \
     test/engine/test_transaction.py test/orm/test_transaction.py";

/// A package's version in the client matrix's requirements (`Name==version`).
fn version_of(package: &str) -> Result<String, String> {
    let req =
        std::fs::read_to_string(root().join("tests/clients/python/requirements.txt")).map_err(|e| e.to_string())?;
    let prefix = format!("{package}==");
    req.lines()
        .find_map(|l| {
            let l = l.trim();
            let name_end = l.find(['[', '='])?;
            (l[..name_end].eq_ignore_ascii_case(package)).then(|| l.rsplit_once("==").map(|(_, v)| v.to_string()))?
        })
        .ok_or_else(|| format!("no {prefix} line in tests/clients/python/requirements.txt"))
}

/// A package's source release (its tests included), unpacked into target/suites by
/// `scripts/test` with the client drivers; `marker` is a file the unpacked tree must have.
fn source_release(package: &str, marker: &str) -> Result<PathBuf, Box<dyn std::error::Error + Send + Sync>> {
    let version = version_of(package)?;
    let source = root().join("target/suites").join(format!("{}-{version}", package.to_ascii_lowercase()));
    check!(
        source.join(marker).exists(),
        "no {package} {version} source release in {}: run scripts/test, which fetches it",
        source.display()
    );
    Ok(source)
}

struct Run {
    seconds: f64,
    summary: String,
    tests: BTreeMap<String, String>,
}

/// Runs `runner` (tests/clients/python/*_suite.py) against `port`.
async fn run_suite(
    runner: &str,
    source: &Path,
    port: u16,
    name: &str,
    labels: &[&str],
) -> Result<Run, Box<dyn std::error::Error + Send + Sync>> {
    let out = root().join(format!("target/suites/{name}.json"));
    let mut cmd = tokio::process::Command::new(python());
    cmd.arg(root().join("tests/clients/python").join(runner))
        .arg(source)
        .arg(port.to_string())
        .arg(name)
        .arg(&out)
        .args(labels)
        .kill_on_drop(true);
    let done = cmd.output().await?;
    let stdout = String::from_utf8_lossy(&done.stdout);
    println!("    {}", stdout.lines().next().unwrap_or(""));
    check!(done.status.success(), "{runner} {name}: {stdout}\n{}", String::from_utf8_lossy(&done.stderr));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
    let tests = v["tests"]
        .as_object()
        .ok_or("no tests in the report")?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
        .collect();
    let summary = v["summary"].as_array().map(|a| a.iter().filter_map(|s| s.as_str()).collect::<Vec<_>>().join(" / "));
    Ok(Run { seconds: v["seconds"].as_f64().unwrap_or(0.0), summary: summary.unwrap_or_default(), tests })
}

fn passes(outcome: &str) -> bool {
    matches!(outcome, "ok" | "skipped" | "expected failure")
}

/// Routed units by (role, reason class), from the proxy's own metrics.
fn routed(proxy: &pgsplit::proxy::Proxy) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for family in proxy.shared.metrics.registry.gather() {
        if family.name() != "pgsplit_routed_total" {
            continue;
        }
        for m in family.get_metric() {
            let label = |n: &str| m.get_label().iter().find(|l| l.name() == n).map(|l| l.value().to_string());
            let key = (label("role").unwrap_or_default(), label("reason").unwrap_or_default());
            *out.entry(key).or_insert(0) += m.get_counter().value() as u64;
        }
    }
    out
}

/// pgsplit as shipped: the default configuration, in front of the test cluster (failover
/// manual: the shared cluster is never failed over).
async fn default_proxy(env: &Env) -> Result<pgsplit::proxy::Proxy, Box<dyn std::error::Error + Send + Sync>> {
    let mut config = pgsplit::config::Config { listen: "127.0.0.1:0".into(), ..Default::default() };
    config.servers.primary = env.cluster.primary().addr();
    config.servers.replicas = env.cluster.replica_addrs().into_iter().map(Into::into).collect();
    config.failover.mode = pgsplit::config::FailoverMode::Manual;
    config.failover.state_dir = String::new();
    let proxy = pgsplit::proxy::Proxy::start(config).await?;
    env.wait_rotation(&proxy, &env.replica_ports()).await?;
    Ok(proxy)
}

/// Runs a suite directly and through pgsplit, prints the differential, and fails on any test
/// that passes directly and fails through pgsplit.
async fn differential(env: &Env, what: &str, runner: &str, source: &Path, labels: &[&str], names: (&str, &str)) -> R {
    let proxy = default_proxy(env).await?;
    let direct = run_suite(runner, source, env.primary_port() as u16, names.0, labels).await?;
    let through = run_suite(runner, source, proxy.addr.port(), names.1, labels).await?;
    let routes = routed(&proxy);
    proxy.stop();

    let mut differences = Vec::new();
    for (test, outcome) in &direct.tests {
        let theirs = through.tests.get(test).map(String::as_str).unwrap_or("not run");
        if passes(outcome) && !passes(theirs) {
            differences.push(format!("{test}: {outcome} directly, {theirs} through pgsplit"));
        }
    }
    let fixed =
        through.tests.iter().filter(|(t, o)| passes(o) && direct.tests.get(*t).is_some_and(|d| !passes(d))).count();
    // Autocommit reads: those a replica took, and those the primary took only because no
    // replica could (read-your-writes, not replayed yet, none in rotation).
    let read_classes = ["read", "causal", "not_replayed", "no_replica", "lag_fallback"];
    let reads = |role: &str| {
        routes.iter().filter(|((r, c), _)| r == role && read_classes.contains(&c.as_str())).map(|(_, n)| n).sum::<u64>()
    };
    let (on_replicas, on_primary) = (reads("replica"), reads("primary"));
    println!(
        "    {what} ({}): {} tests directly ({}), {} through pgsplit ({}); pass directly and fail through pgsplit: {}; \
         fail directly and pass through: {fixed}; time {:.1} s vs {:.1} s ({:.2}x); autocommit reads on replicas: {} of {} ({:.0} %)",
        if labels.is_empty() { "whole suite".to_string() } else { labels.join(" ") },
        direct.tests.len(),
        direct.summary,
        through.tests.len(),
        through.summary,
        differences.len(),
        direct.seconds,
        through.seconds,
        through.seconds / direct.seconds.max(0.001),
        on_replicas,
        on_replicas + on_primary,
        100.0 * on_replicas as f64 / (on_replicas + on_primary).max(1) as f64,
    );
    for d in differences.iter().take(50) {
        println!("      {d}");
    }
    check!(direct.tests.len() > 100, "{what}: only {} tests ran directly", direct.tests.len());
    check!(differences.is_empty(), "{what}: {} tests pass directly and fail through pgsplit", differences.len());
    Ok(())
}

pub async fn django_suite_through_pgsplit(env: &Env) -> R {
    check!(python().exists(), "no Python client venv: run scripts/test, which installs the drivers");
    let source = source_release("Django", "tests/runtests.py")?;
    let labels_env = std::env::var("PGSPLIT_DJANGO_LABELS").unwrap_or_else(|_| CI_LABELS.to_string());
    let labels: Vec<&str> =
        if labels_env.trim() == "all" { Vec::new() } else { labels_env.split_whitespace().collect() };
    let what = format!("Django {}", version_of("Django")?);
    differential(env, &what, "django_suite.py", &source, &labels, ("pgsd", "pgsp")).await
}
register!(django_suite_through_pgsplit);

pub async fn sqlalchemy_suite_through_pgsplit(env: &Env) -> R {
    check!(python().exists(), "no Python client venv: run scripts/test, which installs the drivers");
    let source = source_release("SQLAlchemy", "test/conftest.py")?;
    let tests = std::env::var("PGSPLIT_SQLALCHEMY_TESTS").unwrap_or_else(|_| SQLALCHEMY_TESTS.to_string());
    let tests: Vec<&str> = tests.split_whitespace().collect();
    let what = format!("SQLAlchemy {}", version_of("SQLAlchemy")?);
    differential(env, &what, "sqlalchemy_suite.py", &source, &tests, ("sqla_direct", "sqla_pgsplit")).await
}
register!(sqlalchemy_suite_through_pgsplit);
