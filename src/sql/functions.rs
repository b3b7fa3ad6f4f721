//! What pgsplit knows about functions without asking the server.
//!
//! Volatility alone is not enough: `txid_current()` is STABLE yet assigns an xid, and the
//! advisory-lock functions run happily on a standby while meaning nothing there. Those are
//! listed here. Everything else that is not on the read-only list is looked up in pg_proc.

/// What a call to a function means for routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FunctionKind {
    /// Known to be harmless on a replica.
    ReadOnly,
    /// Needs the primary.
    Primary(&'static str),
    /// Needs the primary and leaves state in the session (session advisory locks).
    PinsSession(&'static str),
    /// Not known here: decided by pg_proc volatility.
    Unknown,
}

const PRIMARY_EXACT: &[(&str, &str)] = &[
    ("nextval", "sequence function"),
    ("setval", "sequence function"),
    ("currval", "sequence function"),
    ("lastval", "sequence function"),
    ("set_config", "set_config"),
    ("txid_current", "assigns a transaction id"),
    ("txid_current_if_assigned", "transaction id function"),
    ("pg_current_xact_id", "assigns a transaction id"),
    ("pg_current_xact_id_if_assigned", "transaction id function"),
    ("pg_current_snapshot", "primary-only snapshot function"),
    ("txid_current_snapshot", "primary-only snapshot function"),
    ("pg_notify", "pg_notify"),
    ("pg_switch_wal", "primary-only admin function"),
    ("pg_create_restore_point", "primary-only admin function"),
    ("pg_terminate_backend", "admin function"),
    ("pg_cancel_backend", "admin function"),
    ("pg_reload_conf", "admin function"),
    ("pg_rotate_logfile", "admin function"),
    ("pg_export_snapshot", "snapshot export"),
    ("pg_logical_emit_message", "writes WAL"),
    ("setseed", "changes session state"),
    ("pg_promote", "admin function"),
];

const PRIMARY_PREFIX: &[(&str, &str)] = &[
    ("pg_current_wal", "primary WAL position"),
    ("pg_advisory_unlock", "advisory lock"),
    ("pg_advisory_xact_lock", "advisory lock"),
    ("pg_try_advisory_xact_lock", "advisory lock"),
    ("lo_", "large object function"),
    ("dblink", "dblink"),
    ("pg_stat_reset", "admin function"),
    ("pg_create_", "replication slot function"),
    ("pg_drop_replication_slot", "replication slot function"),
    ("pg_replication_", "replication function"),
    ("pg_backup_", "backup function"),
    ("pg_wal_replay_", "recovery control function"),
];

/// Session-level advisory locks live on one server connection: the session is pinned.
const PIN_EXACT: &[&str] =
    &["pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared"];

/// Common built-ins known to be read-only (volatile ones here are harmless: random numbers,
/// clocks, sleeping). Saves a catalog look-up for the everyday case.
const READ_ONLY: &[&str] = &[
    "abs",
    "age",
    "array_agg",
    "array_length",
    "array_position",
    "array_to_string",
    "avg",
    "bool_and",
    "bool_or",
    "btrim",
    "cardinality",
    "ceil",
    "ceiling",
    "char_length",
    "character_length",
    "clock_timestamp",
    "coalesce",
    "concat",
    "concat_ws",
    "count",
    "current_database",
    "current_date",
    "current_role",
    "current_schema",
    "current_schemas",
    "current_setting",
    "current_time",
    "current_timestamp",
    "current_user",
    "date_part",
    "date_trunc",
    "decode",
    "dense_rank",
    "encode",
    "every",
    "exp",
    "first_value",
    "floor",
    "format",
    "gen_random_uuid",
    "generate_series",
    "generate_subscripts",
    "greatest",
    "inet_client_addr",
    "inet_server_addr",
    "inet_server_port",
    "initcap",
    "json_agg",
    "json_array_elements",
    "json_array_length",
    "json_build_array",
    "json_build_object",
    "json_each",
    "json_extract_path",
    "json_extract_path_text",
    "json_object_agg",
    "jsonb_agg",
    "jsonb_array_elements",
    "jsonb_array_length",
    "jsonb_build_array",
    "jsonb_build_object",
    "jsonb_each",
    "jsonb_extract_path",
    "jsonb_extract_path_text",
    "jsonb_object_agg",
    "jsonb_object_keys",
    "jsonb_set",
    "jsonb_typeof",
    "lag",
    "last_value",
    "lead",
    "least",
    "left",
    "length",
    "ln",
    "localtime",
    "localtimestamp",
    "log",
    "lower",
    "lpad",
    "ltrim",
    "make_date",
    "make_interval",
    "make_timestamp",
    "max",
    "md5",
    "min",
    "mod",
    "now",
    "ntile",
    "nullif",
    "octet_length",
    "pg_backend_pid",
    "pg_is_in_recovery",
    "pg_last_wal_receive_lsn",
    "pg_last_wal_replay_lsn",
    "pg_last_xact_replay_timestamp",
    "pg_postmaster_start_time",
    "pg_sleep",
    "pg_sleep_for",
    "pg_sleep_until",
    "pg_typeof",
    "pg_wal_lsn_diff",
    "power",
    "random",
    "rank",
    "regexp_match",
    "regexp_matches",
    "regexp_replace",
    "regexp_split_to_array",
    "repeat",
    "replace",
    "reverse",
    "right",
    "round",
    "row_number",
    "row_to_json",
    "rpad",
    "rtrim",
    "session_user",
    "sign",
    "split_part",
    "sqrt",
    "starts_with",
    "statement_timestamp",
    "string_agg",
    "string_to_array",
    "strpos",
    "substr",
    "sum",
    "timeofday",
    "to_char",
    "to_date",
    "to_json",
    "to_jsonb",
    "to_number",
    "to_timestamp",
    "transaction_timestamp",
    "translate",
    "trunc",
    "unnest",
    "upper",
    "user",
    "uuid_generate_v4",
    "version",
];

/// Classifies a function by its (lower-cased, possibly schema-qualified) name.
pub fn function_kind(qualified: &str) -> FunctionKind {
    let (schema, name) = match qualified.rsplit_once('.') {
        Some((s, n)) => (Some(s), n),
        None => (None, qualified),
    };
    // A user function in another schema may shadow nothing here; only pg_catalog (or no
    // schema) gets the built-in treatment.
    let builtin = matches!(schema, None | Some("pg_catalog"));
    if builtin {
        if PIN_EXACT.contains(&name) {
            return FunctionKind::PinsSession("session advisory lock");
        }
        if let Some((_, why)) = PRIMARY_EXACT.iter().find(|(n, _)| *n == name) {
            return FunctionKind::Primary(why);
        }
        if let Some((_, why)) = PRIMARY_PREFIX.iter().find(|(p, _)| name.starts_with(p)) {
            return FunctionKind::Primary(why);
        }
        if READ_ONLY.binary_search(&name).is_ok() {
            return FunctionKind::ReadOnly;
        }
    }
    FunctionKind::Unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_list_is_sorted() {
        let mut sorted = READ_ONLY.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, READ_ONLY);
    }

    #[test]
    fn kinds() {
        assert_eq!(function_kind("count"), FunctionKind::ReadOnly);
        assert_eq!(function_kind("pg_catalog.now"), FunctionKind::ReadOnly);
        assert!(matches!(function_kind("nextval"), FunctionKind::Primary(_)));
        assert!(matches!(function_kind("pg_current_wal_lsn"), FunctionKind::Primary(_)));
        assert!(matches!(function_kind("lo_import"), FunctionKind::Primary(_)));
        assert!(matches!(function_kind("pg_advisory_xact_lock"), FunctionKind::Primary(_)));
        assert!(matches!(function_kind("pg_advisory_lock"), FunctionKind::PinsSession(_)));
        assert_eq!(function_kind("myschema.count"), FunctionKind::Unknown);
        assert_eq!(function_kind("my_func"), FunctionKind::Unknown);
    }
}
