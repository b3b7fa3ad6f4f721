"""asyncpg: named statements with its statement cache, binary format, executemany, COPY,
transactions. asyncpg prepares with Parse/Describe/Flush and waits before Bind/Execute/Sync."""
import asyncio

import asyncpg
from pgsplit_env import HOST, PORT, catch_up, on_primary, on_replica, spread


async def main():
    conn = await asyncpg.connect(host=HOST, port=PORT, user="postgres", database="postgres")
    await conn.execute("DROP TABLE IF EXISTS apg_items; CREATE TABLE apg_items (id serial PRIMARY KEY, name text, qty int)")
    catch_up()
    ports = [await conn.fetchval("SELECT inet_server_port()") for _ in range(30)]
    spread(ports, "fetchval reads")
    # Parameters and binary types through the statement cache.
    for i in range(20):
        row = await conn.fetchrow("SELECT $1::int + 1 AS n, $2::text AS t, inet_server_port() AS p", i, f"x{i}")
        assert row["n"] == i + 1 and row["t"] == f"x{i}"
        on_replica(row["p"], "cached statement read")
    await conn.executemany("INSERT INTO apg_items (name, qty) VALUES ($1, $2)", [(f"n{i}", i) for i in range(200)])
    port = await conn.fetchval("INSERT INTO apg_items (name, qty) VALUES ('one', 1) RETURNING inet_server_port()")
    on_primary(port, "INSERT")
    async with conn.transaction():
        on_primary(await conn.fetchval("SELECT inet_server_port()"), "read in transaction")
        await conn.execute("UPDATE apg_items SET qty = qty + 1 WHERE id = $1", 1)
        on_primary(await conn.fetchval("SELECT inet_server_port() FROM apg_items WHERE id = 1 FOR UPDATE"), "FOR UPDATE")
    catch_up()
    stmt = await conn.prepare("SELECT qty, inet_server_port() FROM apg_items WHERE id = $1")
    for _ in range(5):
        qty, port = await stmt.fetchrow(1)
        on_replica(port, "prepared statement")
    # COPY both ways.
    await conn.copy_records_to_table("apg_items", records=[(f"c{i}", i) for i in range(300)], columns=["name", "qty"])
    rows = []
    catch_up()

    async def sink(data):
        rows.append(data)

    await conn.copy_from_query("SELECT name FROM apg_items", output=sink)
    assert b"".join(rows).count(b"\n") >= 500
    # An error does not break the connection.
    try:
        await conn.fetchval("SELECT 1/0")
    except asyncpg.DivisionByZeroError:
        pass
    assert await conn.fetchval("SELECT 41 + 1") == 42
    await conn.close()

    # set_config with bound parameters (asyncpg always prepares): replayed, not pinned.
    conn = await asyncpg.connect(host=HOST, port=PORT, user="postgres", database="postgres")
    assert await conn.fetchval("SELECT set_config('TimeZone', $1, false)", "Asia/Tokyo") == "Asia/Tokyo"
    await conn.execute("SELECT set_config($1, $2, false)", "application_name", "asyncpg-bound")
    ports = []
    for _ in range(30):
        row = await conn.fetchrow("SELECT inet_server_port(), current_setting('TimeZone'), current_setting('application_name')")
        assert row[1] == "Asia/Tokyo" and row[2] == "asyncpg-bound", f"settings lost on {row[0]}: {row}"
        ports.append(row[0])
    spread(ports, "reads after a bound set_config")
    await conn.close()

    # A pool, concurrent readers.
    pool = await asyncpg.create_pool(host=HOST, port=PORT, user="postgres", database="postgres", min_size=2, max_size=5)
    results = await asyncio.gather(*[pool.fetchval("SELECT inet_server_port()") for _ in range(40)])
    spread(results, "pool reads")
    await pool.close()


asyncio.run(main())
print("asyncpg ok")
