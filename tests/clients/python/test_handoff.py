"""Read-your-writes across connections, the way a web app hands work to a background worker:
the request commits a row, reads the commit position pgsplit reports in the ParameterStatus
`pgsplit.last_write_lsn`, and passes it with the job; the worker (another connection, maybe
another process) sets `pgsplit.min_lsn` to it before reading, and always finds the row, even
though the replicas replay late."""
import psycopg
from pgsplit_env import DSN

web = psycopg.connect(DSN, autocommit=True)
worker = psycopg.connect(DSN, autocommit=True)
web.execute("DROP TABLE IF EXISTS handoff_jobs")
web.execute("CREATE TABLE handoff_jobs (id serial PRIMARY KEY, payload text)")

previous = None
for i in range(200):
    with web.transaction():
        (job_id,) = web.execute(
            "INSERT INTO handoff_jobs (payload) VALUES (%s) RETURNING id", (f"job {i}",)
        ).fetchone()
    lsn = web.info.parameter_status("pgsplit.last_write_lsn")
    assert lsn, "pgsplit reported no pgsplit.last_write_lsn after a commit"
    lsn = lsn.decode() if isinstance(lsn, bytes) else lsn
    assert lsn != previous, f"the reported position did not move after commit {i}: {lsn}"
    previous = lsn
    # The job carries (job_id, lsn); the worker waits for nothing but gets its row.
    worker.execute(f"SET pgsplit.min_lsn = '{lsn}'")
    row = worker.execute("SELECT payload FROM handoff_jobs WHERE id = %s", (job_id,)).fetchone()
    assert row == (f"job {i}",), f"the worker missed job {job_id} written at {lsn}: {row}"

# A write that fails reports nothing new.
try:
    with web.transaction():
        web.execute("INSERT INTO handoff_jobs (id, payload) VALUES (1, 'duplicate')")
except psycopg.errors.UniqueViolation:
    pass
assert web.info.parameter_status("pgsplit.last_write_lsn") in (previous, previous.encode())
print("handoff ok")
