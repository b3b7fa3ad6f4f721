"""psycopg 3: server-side binding and its prepare threshold, pipeline mode, COPY, binary."""
import psycopg
from pgsplit_env import DSN, catch_up, on_primary, on_replica, spread

with psycopg.connect(DSN, autocommit=True) as conn:
    conn.execute("DROP TABLE IF EXISTS pg3_items")
    conn.execute("CREATE TABLE pg3_items (id serial PRIMARY KEY, name text, qty int)")
    catch_up()

    # Reads outside transactions: replicas, both of them.
    spread([conn.execute("SELECT inet_server_port()").fetchone()[0] for _ in range(30)], "autocommit reads")

    # Prepared statements: threshold 0 prepares at once (named, on the server).
    conn.prepare_threshold = 0
    ports = []
    for i in range(30):
        v, port = conn.execute("SELECT %s::int * 2, inet_server_port()", (i,)).fetchone()
        assert v == 2 * i
        ports.append(port)
    spread(ports, "prepared reads")
    for i in range(10):
        (port,) = conn.execute(
            "INSERT INTO pg3_items (name, qty) VALUES (%s, %s) RETURNING inet_server_port()", (f"n{i}", i)
        ).fetchone()
        on_primary(port, "prepared INSERT")
    # set_config with bound parameters (named server-side statements at threshold 0): replayed
    # on every server connection, not pinned.
    conn.execute("SELECT set_config(%s, %s, false)", ("TimeZone", "Asia/Tokyo"))
    conn.execute("SELECT set_config('application_name', %s, false)", ("psycopg-bound",))
    ports = []
    for _ in range(30):
        port, tz, app = conn.execute(
            "SELECT inet_server_port(), current_setting('TimeZone'), current_setting('application_name')"
        ).fetchone()
        assert (tz, app) == ("Asia/Tokyo", "psycopg-bound"), f"settings lost on {port}: {tz} {app}"
        ports.append(port)
    spread(ports, "reads after a bound set_config")
    conn.execute("RESET ALL")
    conn.prepare_threshold = 5

    # Transactions: everything on the primary.
    with conn.transaction():
        for _ in range(3):
            on_primary(conn.execute("SELECT inet_server_port()").fetchone()[0], "read in transaction()")
        conn.execute("UPDATE pg3_items SET qty = qty + 1 WHERE id = 1")
        with conn.transaction():  # a savepoint
            conn.execute("UPDATE pg3_items SET qty = qty + 100 WHERE id = 1")
            on_primary(conn.execute("SELECT inet_server_port()").fetchone()[0], "read in a savepoint")
    # Locking read.
    on_primary(conn.execute("SELECT inet_server_port() FROM pg3_items WHERE id = 1 FOR UPDATE").fetchone()[0], "FOR UPDATE")

    # Pipeline mode: several statements, one round trip.
    with conn.pipeline():
        cur1 = conn.execute("INSERT INTO pg3_items (name, qty) VALUES ('p1', 1) RETURNING id")
        cur2 = conn.execute("INSERT INTO pg3_items (name, qty) VALUES ('p2', 2) RETURNING id")
        cur3 = conn.execute("SELECT inet_server_port()")
    assert cur1.fetchone()[0] < cur2.fetchone()[0]
    on_primary(cur3.fetchone()[0], "read pipelined after writes")
    with conn.pipeline():
        reads = [conn.execute("SELECT inet_server_port(), %s::int", (i,)) for i in range(10)]
    for i, c in enumerate(reads):
        port, v = c.fetchone()
        assert v == i
        on_replica(port, "pipelined read")

    # COPY both ways, and a COPY that fails half way.
    with conn.cursor() as cur:
        with cur.copy("COPY pg3_items (name, qty) FROM STDIN") as copy:
            for i in range(1000):
                copy.write_row((f"c{i}", i))
        out = bytearray()
        with cur.copy("COPY (SELECT name, qty FROM pg3_items ORDER BY id) TO STDOUT") as copy:
            for chunk in copy:
                out += chunk
        n_primary = conn.execute("/* pgsplit:primary */ SELECT count(*) FROM pg3_items").fetchone()[0]
        assert out.count(b"\n") <= n_primary
        try:
            with cur.copy("COPY pg3_items (name, qty) FROM STDIN") as copy:
                copy.write_row(("ok", 1))
                raise RuntimeError("abort the copy")
        except RuntimeError:
            pass
        assert conn.execute("SELECT 1").fetchone()[0] == 1

    # Binary results and parameters.
    cur = conn.cursor(binary=True)
    row = cur.execute("SELECT %b::int8, %b::text, %b::float8, inet_server_port()", (2**40, "héllo", 1.5)).fetchone()
    assert row[:3] == (2**40, "héllo", 1.5), row
    on_replica(row[3], "binary read")

# Non-autocommit (psycopg's default): every statement runs inside BEGIN ... on the primary.
with psycopg.connect(DSN) as conn:
    on_primary(conn.execute("SELECT inet_server_port()").fetchone()[0], "implicit transaction")
    conn.rollback()
    with conn.transaction():
        pass

# A read-only session runs its transactions on a replica.
with psycopg.connect(DSN) as conn:
    conn.read_only = True
    ports = {conn.execute("SELECT inet_server_port()").fetchone()[0] for _ in range(3)}
    assert len(ports) == 1
    on_replica(ports.pop(), "read_only transaction")
    conn.commit()

print("psycopg ok")
