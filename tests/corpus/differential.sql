-- One query per line, run directly on the primary and through pgsplit (on a replica), in the
-- text and binary formats (and the simple protocol); the answers must be byte for byte equal.
SELECT * FROM diff_types WHERE id <= 4 ORDER BY id
SELECT id, i2, i4, i8, num, f4, f8 FROM diff_types WHERE id <= 4 ORDER BY id
SELECT id, t, vc, ch, by, b FROM diff_types WHERE id <= 4 ORDER BY id
SELECT id, d, ts, tstz, iv, tm FROM diff_types WHERE id <= 4 ORDER BY id
SELECT id, u, j, jb, arr, tarr, mood, rng, ip, bits FROM diff_types WHERE id <= 4 ORDER BY id
SELECT count(*), sum(i4), avg(i4), min(t), max(t) FROM diff_types
SELECT id, length(t) FROM diff_types ORDER BY id
SELECT * FROM diff_types ORDER BY id LIMIT 0
SELECT i4 % 7 AS k, count(*), string_agg(id::text, ',' ORDER BY id) FROM diff_types GROUP BY 1 ORDER BY 1
SELECT jb -> 'k', jb #>> '{b,c}', j -> 'a' -> 1 FROM diff_types WHERE id IN (1, 4) ORDER BY id
SELECT arr[2], array_length(tarr, 1), unnest(arr) FROM diff_types WHERE id = 1
SELECT row(id, t, b) FROM diff_types WHERE id <= 3 ORDER BY id
SELECT to_char(ts, 'YYYY-MM-DD HH24:MI:SS.US'), extract(epoch FROM tstz) FROM diff_types WHERE id <= 4 ORDER BY id
SELECT NULL::int, NULL::text, ''::text, ' '::char(3)
SELECT 1.0::float8 / 3, 2::numeric / 3, 10::int / 3, power(2::numeric, 100)
SELECT x FROM generate_series(1, 1000) x WHERE x % 97 = 0
SELECT md5(string_agg(t, '' ORDER BY id)) FROM diff_types
SELECT 'a' || repeat('b', 100000) AS long_value
SELECT * FROM (VALUES (1, 'one'), (2, 'two')) v(n, w) ORDER BY n
WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 50) SELECT sum(n) FROM r
SELECT i4, rank() OVER (ORDER BY i4 DESC) FROM diff_types WHERE id <= 10 ORDER BY id
SELECT relname FROM pg_class WHERE relname = 'diff_types'
SELECT typname FROM pg_type WHERE typname = 'diff_mood'
SELECT 1/0
SELECT * FROM no_such_table_anywhere
SELECT 'not a number'::int
EXPLAIN (COSTS OFF) SELECT * FROM diff_types WHERE id = 1
