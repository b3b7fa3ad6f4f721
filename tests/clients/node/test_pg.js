// node-postgres: plain and named prepared statements, pools, transactions.
const { Client, Pool } = require('pg');
const assert = require('assert');

const port = Number(process.env.PGSPLIT_PORT);
const primary = Number(process.env.PGSPLIT_PRIMARY_PORT);
const replicas = new Set(process.env.PGSPLIT_REPLICA_PORTS.split(',').map(Number));
const config = { host: '127.0.0.1', port, user: 'postgres', database: 'postgres' };

function spread(ports, what) {
  const seen = [...new Set(ports)].sort();
  assert.deepStrictEqual(seen, [...replicas].sort(), `${what}: reads ran on ${seen}`);
}

async function main() {
  const c = new Client(config);
  await c.connect();
  await c.query('DROP TABLE IF EXISTS node_items; CREATE TABLE node_items (id serial PRIMARY KEY, v int)');
  const ports = [];
  for (let i = 0; i < 30; i++) {
    // A named prepared statement, bound again and again (possibly on other server connections).
    const r = await c.query({ name: 'read-port', text: 'SELECT inet_server_port() AS p, $1::int AS v', values: [i] });
    assert.strictEqual(r.rows[0].v, i);
    ports.push(r.rows[0].p);
  }
  spread(ports, 'named statement reads');
  for (let i = 0; i < 10; i++) {
    const r = await c.query({ name: 'insert', text: 'INSERT INTO node_items (v) VALUES ($1) RETURNING inet_server_port() AS p', values: [i] });
    assert.strictEqual(r.rows[0].p, primary, 'INSERT ran off the primary');
  }
  await c.query('BEGIN');
  const t = await c.query({ name: 'read-port', text: 'SELECT inet_server_port() AS p, $1::int AS v', values: [1] });
  assert.strictEqual(t.rows[0].p, primary, 'read in a transaction ran off the primary');
  await c.query('UPDATE node_items SET v = v + 1 WHERE id = 1');
  await c.query('COMMIT');
  // set_config with bound parameters: replayed on every server connection, not pinned.
  await c.query('SELECT set_config($1, $2, false)', ['TimeZone', 'Asia/Tokyo']);
  const bound = [];
  for (let i = 0; i < 30; i++) {
    const r = await c.query("SELECT inet_server_port() AS p, current_setting('TimeZone') AS tz");
    assert.strictEqual(r.rows[0].tz, 'Asia/Tokyo', `TimeZone lost on ${r.rows[0].p}`);
    bound.push(r.rows[0].p);
  }
  spread(bound, 'reads after a bound set_config');
  await assert.rejects(c.query('SELECT 1/0'));
  assert.strictEqual((await c.query('SELECT 2 AS two')).rows[0].two, 2);
  await c.end();

  const pool = new Pool({ ...config, max: 5 });
  const rs = await Promise.all(Array.from({ length: 40 }, () => pool.query('SELECT inet_server_port() AS p')));
  spread(rs.map((r) => r.rows[0].p), 'pool reads');
  await pool.end();
  console.log('node-postgres ok');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
