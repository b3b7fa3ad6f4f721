//! Integration tests against a real primary and two streaming replicas, started once for the
//! whole run by the project's own harness (`pgsplit::localcluster`) and torn down at the end.
//!
//! A custom runner (harness = false) so that the cluster outlives every test and is always
//! torn down: tests run one after another (some stop and restart servers), each with a time
//! limit; the last line is "N passed, N failed". Pass substrings as arguments to run a subset.

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
mod failures;
mod fencing;
mod fidelity;
mod lag;
mod limits;
mod ops;
mod protocol;
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

use common::{Env, TestFn};

macro_rules! tests {
    ($($path:path),* $(,)?) => {
        vec![$((stringify!($path), (|e| Box::pin($path(e))) as TestFn)),*]
    };
}

fn main() {
    // PGSPLIT_TEST_LOG=debug (or any tracing filter) shows pgsplit's own logs.
    if let Ok(filter) = std::env::var("PGSPLIT_TEST_LOG") {
        tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new(filter)).init();
    }
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    #[allow(unused_mut)]
    let mut all: Vec<(&str, TestFn)> = tests![
        routing::reads_spread_over_both_replicas,
        routing::writes_and_ddl_go_to_the_primary,
        routing::locking_reads_go_to_the_primary,
        routing::writing_selects_go_to_the_primary,
        routing::side_effect_functions_go_to_the_primary,
        routing::user_functions_by_volatility,
        routing::views_that_write_go_to_the_primary,
        routing::unparseable_goes_to_the_primary,
        routing::multi_statement_queries,
        routing::transactions_stay_on_one_server,
        routing::read_only_transactions_use_a_replica,
        routing::hints_and_route_setting,
        routing::route_setting_in_the_extended_protocol,
        routing::two_phase_commit_goes_to_the_primary,
        standby::serializable_read_only_transactions_run_on_the_primary,
        standby::serializable_first_statement_moves_a_fresh_transaction,
        standby::transaction_modes_outside_transactions_never_fail,
        standby::serializable_sessions_read_on_the_primary,
        standby::reads_the_parser_cannot_read_reach_replicas,
        standby::bound_set_config_is_replayed_not_pinned,
        standby::duplicate_statement_names_and_aborted_transactions,
        corpus::standby_accepts_what_the_corpus_sends_it,
        corpus::builtin_function_audit_matches_pg_proc,
        corpus::server_local_view_audit_matches_pg_views,
        session::settings_follow_the_client,
        session::set_config_is_replayed_not_pinned,
        session::settings_in_rolled_back_transactions_are_forgotten,
        session::session_state_pins_to_the_primary,
        session::role_changes_never_leak_to_other_clients,
        session::parameter_status_looks_like_a_primary,
        protocol::named_prepared_statements_on_any_connection,
        protocol::extended_batches_route_as_one_unit,
        protocol::many_statements_keep_server_memory_bounded,
        protocol::copy_in_and_out,
        protocol::cancel_reaches_the_right_server,
        protocol::errors_notices_and_empty_queries,
        protocol::malformed_message_gets_08p01,
        credentials::md5_and_scram_authentication,
        credentials::stored_hashes_and_password_files,
        credentials::auth_query_users_and_pass_through,
        credentials::auth_query_cache_follows_password_changes,
        tls::tls_for_every_client_and_channel_binding,
        tls::certificates_reload_without_dropping_connections,
        tls::servers_over_tls,
        tls::cleartext_passwords_only_over_verified_tls,
        failures::pool_timeout_is_a_clear_error,
        failures::bad_state_connections_are_not_reused,
        failures::client_gone_mid_query_leaves_nothing_running,
        failures::metrics_endpoint_reports_routing_and_lag,
        failures::lagging_replica_leaves_rotation,
        failures::replay_delay_in_time_leaves_rotation_but_idleness_does_not,
        failures::reads_on_a_dying_connection_run_again_elsewhere,
        lag::a_stalled_replica_leaves_at_once_and_returns_after_the_hold,
        lag::when_every_replica_is_out,
        lag::weights_share_the_reads,
        lag::lag_in_time_after_idleness,
        ryw::reads_see_their_own_writes_in_every_mode,
        ryw::min_lsn_carries_the_floor_between_connections,
        ryw::connections_opened_after_a_commit_see_it,
        ryw::objects_not_replayed_yet_are_read_on_the_primary,
        limits::silent_sockets_are_shed,
        limits::too_many_clients_get_53300,
        limits::oversized_messages_are_refused_unread,
        limits::idle_clients_and_idle_transactions_are_closed,
        limits::no_secret_in_the_logs,
        limits::password_guessing_is_slowed,
        limits::hostile_clients_beside_pgbench,
        limits::long_queries_are_cancelled,
        limits::one_client_cannot_exhaust_memory,
        security::the_console_asks_for_a_password_when_clients_are_trusted,
        security::cancels_reach_only_running_statements,
        security::no_secret_in_show_config_or_config_errors,
        security::empty_passwords_never_log_in,
        ops::admin_console,
        ops::reload_under_load,
        ops::reload_removes_and_adds_replicas,
        ops::prometheus_scrapes_the_series,
        ops::grafana_dashboard_is_valid,
        failures::replica_down_reads_go_elsewhere,
        failures::primary_down_reads_go_on_writes_fail_fast,
        corners::portals_with_row_limits_in_transactions,
        corners::huge_rows_results_and_queries,
        corners::max_parameters,
        corners::prepared_statements_survive_replaced_connections_and_ddl,
        corners::notify_reaches_a_listening_session,
        corners::savepoints_and_errors_in_transactions,
        corners::database_ddl_through_the_pool,
        fidelity::a_servers_fatal_reaches_the_client_as_directly,
        fidelity::no_client_can_eject_a_replica,
        differential::results_match_the_primary_byte_for_byte,
        failover::kill_the_primary_under_load,
        failover::cut_off_from_a_live_primary_no_promotion,
        failover::manual_mode_waits_for_promote,
        failover::synchronous_replication_loses_no_acknowledged_commit,
        failover::switchover_loses_nothing,
        fencing::held_sessions_never_write_on_a_former_primary,
        fencing::failover_state_cannot_be_lost,
        failover::a_diverged_replica_is_kept_out,
        failover::a_replica_promoted_by_someone_else_is_adopted,
        clients::read_your_writes_handoff,
        clients::psycopg3,
        clients::psycopg2,
        clients::asyncpg,
        clients::sqlalchemy_sync_and_asyncio,
        clients::django_orm_and_seminar_race,
        clients::node_postgres,
        clients::jdbc,
        suites::django_suite_through_pgsplit,
        suites::sqlalchemy_suite_through_pgsplit,
        clients::sqlx_pool,
        tools::psql_script,
        tools::psql_watch_repeats,
        tools::pgbench_all_modes,
    ];
    // (With etcd, the same runs are made beside three coordinated instances.)
    #[cfg(not(feature = "etcd"))]
    all.extend(tests![failover::failover_times_over_several_runs]);
    // Several instances on a real etcd (the README's test command builds with --features etcd).
    #[cfg(feature = "etcd")]
    all.extend(tests![
        coordination::three_instances_fail_over_once,
        coordination::one_instance_cut_off_no_promotion,
        coordination::leader_killed_mid_failover,
        coordination::etcd_quorum_lost_writes_fail_closed,
        coordination::console_commands_act_on_every_instance,
        etcd_secured::etcd_over_tls_with_authentication,
        coordination::failover_times_alone_and_three_instances,
    ]);
    let selected: Vec<_> =
        all.into_iter().filter(|(n, _)| filters.is_empty() || filters.iter().any(|f| n.contains(f.as_str()))).collect();
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
