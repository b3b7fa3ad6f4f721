"""psycopg2: implicit transactions, autocommit reads, execute_values, COPY."""
import io

import psycopg2
import psycopg2.extras
from pgsplit_env import DSN, catch_up, on_primary, spread

conn = psycopg2.connect(DSN)
cur = conn.cursor()
# psycopg2 opens a transaction before the first statement: all on the primary.
cur.execute("SELECT inet_server_port()")
on_primary(cur.fetchone()[0], "implicit transaction")
cur.execute("DROP TABLE IF EXISTS pg2_items; CREATE TABLE pg2_items (id serial PRIMARY KEY, v int)")
psycopg2.extras.execute_values(cur, "INSERT INTO pg2_items (v) VALUES %s", [(i,) for i in range(500)])
conn.commit()
catch_up()

conn.autocommit = True
ports = []
for _ in range(30):
    cur.execute("SELECT inet_server_port(), count(*) FROM pg2_items")
    port, _n = cur.fetchone()
    ports.append(port)
spread(ports, "autocommit reads")
cur.execute("SELECT inet_server_port() FROM pg2_items WHERE id = %s FOR UPDATE", (1,))
on_primary(cur.fetchone()[0], "FOR UPDATE")

buf = io.StringIO("".join(f"{i}\n" for i in range(100)))
cur.copy_expert("COPY pg2_items (v) FROM STDIN", buf)
catch_up()
out = io.StringIO()
cur.copy_expert("COPY (SELECT v FROM pg2_items) TO STDOUT", out)
assert len(out.getvalue().splitlines()) >= 500

try:
    cur.execute("SELECT 1/0")
except psycopg2.errors.DivisionByZero:
    pass
cur.execute("SELECT 2")
assert cur.fetchone()[0] == 2
conn.close()
print("psycopg2 ok")
