"""What every client test needs: where pgsplit and the servers are, and routing checks.

The Rust test harness starts the cluster and pgsplit and passes their ports in the
environment; each script exits non-zero (an AssertionError) when something is wrong.
"""
import os

HOST = "127.0.0.1"
PORT = int(os.environ["PGSPLIT_PORT"])
PRIMARY = int(os.environ["PGSPLIT_PRIMARY_PORT"])
REPLICAS = {int(p) for p in os.environ["PGSPLIT_REPLICA_PORTS"].split(",")}
USER = "postgres"
DB = "postgres"
DSN = f"host={HOST} port={PORT} user={USER} dbname={DB}"
URL = f"postgresql://{USER}@{HOST}:{PORT}/{DB}"


def on_primary(port, what):
    assert port == PRIMARY, f"{what}: ran on {port}, not the primary {PRIMARY}"


def on_replica(port, what):
    assert port in REPLICAS, f"{what}: ran on {port}, not a replica {sorted(REPLICAS)}"


def spread(ports, what):
    """Reads outside transactions must land on the replicas, and on both of them."""
    ports = set(ports)
    assert ports == REPLICAS, f"{what}: reads ran on {sorted(ports)}, want the replicas {sorted(REPLICAS)}"


def catch_up(timeout=30.0):
    """Waits until every replica has replayed what the primary has written so far.

    pgsplit reads go to replicas; a test that reads its own write right away must wait for
    replication first (read-your-writes routing is a separate feature).
    """
    import time

    import psycopg

    with psycopg.connect(f"host={HOST} port={PRIMARY} user={USER} dbname={DB}", autocommit=True) as p:
        lsn = p.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    deadline = time.monotonic() + timeout
    for port in REPLICAS:
        with psycopg.connect(f"host={HOST} port={port} user={USER} dbname={DB}", autocommit=True) as r:
            while not r.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0]:
                assert time.monotonic() < deadline, f"replica {port} did not catch up"
                time.sleep(0.01)
