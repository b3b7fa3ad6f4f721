//! Integration tests against a real primary and two streaming replicas, started once for the
//! whole run by the project's own harness (`pgsplit::localcluster`) and torn down at the end.
//!
//! A custom runner (harness = false) so that the cluster outlives every test and is always
//! torn down: tests run one after another (some stop and restart servers), each with a time
//! limit; the last line is "N passed, N failed". Pass substrings as arguments to run a subset.
//! Tests register themselves beside their definitions (`register!` in common.rs); `--list`
//! prints them in the order they run.

mod clients;
mod common;
#[cfg(feature = "etcd")]
mod coordination;
mod corners;
mod corpus;
mod credentials;
mod differential;
#[cfg(feature = "etcd")]
mod etcd_secured;
mod failover;
#[cfg(not(feature = "etcd"))]
mod failover_times;
mod failures;
mod fencing;
mod fidelity;
mod lag;
mod limits;
mod ops;
mod own_cluster;
mod protocol;
mod rejoin;
mod routing;
mod ryw;
mod security;
mod session;
mod standby;
mod suites;
mod tls;
mod tools;

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use common::{Env, Test, TestFn};

fn main() {
    // PGSPLIT_TEST_LOG=debug (or any tracing filter) shows pgsplit's own logs.
    if let Ok(filter) = std::env::var("PGSPLIT_TEST_LOG") {
        tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new(filter)).init();
    }
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    // Every test registered itself beside its definition (`register!`): in rank order, then by
    // file and line. A file of tests whose module is missing above is an error, not a silent skip.
    let mut all: Vec<&Test> = inventory::iter::<Test>().collect();
    all.sort_by_key(|t| (t.rank, t.file, t.line));
    if let Err(missing) = every_file_is_compiled(&all) {
        eprintln!("{missing}");
        std::process::exit(1);
    }
    let selected: Vec<(&str, TestFn)> = all
        .into_iter()
        .map(|t| (t.name.trim_start_matches("integration::"), t.run))
        .filter(|(n, _)| filters.is_empty() || filters.iter().any(|f| n.contains(f.as_str())))
        .collect();
    if std::env::args().any(|a| a == "--list") {
        for (name, _) in &selected {
            println!("{name}");
        }
        return;
    }
    if selected.is_empty() {
        println!("0 passed, 0 failed");
        return;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    };
    // Each test's time limit (PGSPLIT_TEST_TIMEOUT_S: scripts/django-suite runs a whole suite).
    let limit = std::env::var("PGSPLIT_TEST_TIMEOUT_S").ok().and_then(|s| s.parse().ok()).unwrap_or(180);
    let started = Instant::now();
    let env = match rt.block_on(Env::start()) {
        Ok(env) => env,
        Err(e) => {
            eprintln!("cannot start the test cluster: {e}");
            println!("0 passed, {} failed", selected.len());
            std::process::exit(1);
        }
    };
    println!("cluster and proxy up in {:.1}s", started.elapsed().as_secs_f64());
    let (mut passed, mut failed) = (0, 0);
    let mut failures = Vec::new();
    for (name, test) in selected {
        let t0 = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(limit), test(&env)).await })
        }));
        let outcome = match result {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(format!("{e} ({e:?})")),
            Ok(Err(_)) => Err("timed out".to_string()),
            Err(p) => Err(p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked".into())),
        };
        match outcome {
            Ok(()) => {
                passed += 1;
                println!("test {name} ... ok ({:.1}s)", t0.elapsed().as_secs_f64());
            }
            Err(e) => {
                failed += 1;
                println!("test {name} ... FAILED ({:.1}s): {e}", t0.elapsed().as_secs_f64());
                failures.push(name);
            }
        }
    }
    rt.block_on(env.stop());
    drop(env);
    if !failures.is_empty() {
        println!("failures: {}", failures.join(", "));
    }
    println!("{passed} passed, {failed} failed");
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

/// Each file in tests/integration (but the runner and the helpers) must have registered
/// a test: a file whose `mod` line is missing (or cfg'd out by mistake) would never run.
fn every_file_is_compiled(all: &[&Test]) -> Result<(), String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/integration");
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // Files that hold only tests of a feature this build lacks.
    let feature_only: &[&str] =
        if cfg!(feature = "etcd") { &["failover_times.rs"] } else { &["coordination.rs", "etcd_secured.rs"] };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".rs")
            || ["main.rs", "common.rs", "own_cluster.rs"].contains(&name.as_str())
            || feature_only.contains(&name.as_str())
        {
            continue;
        }
        if !all.iter().any(|t| std::path::Path::new(t.file).file_name().is_some_and(|f| f.to_string_lossy() == name)) {
            return Err(format!("tests/integration/{name} registers no test: is it missing from main.rs's mod list?"));
        }
    }
    Ok(())
}
