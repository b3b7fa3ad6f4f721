-- Data for the differential check: every common type, NULLs, edge values.
DROP TABLE IF EXISTS diff_types;
DROP TYPE IF EXISTS diff_mood;
CREATE TYPE diff_mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE diff_types (
  id int PRIMARY KEY,
  i2 int2, i4 int4, i8 int8, num numeric(20, 6), f4 float4, f8 float8,
  t text, vc varchar(20), ch char(5), by bytea, b bool,
  d date, ts timestamp, tstz timestamptz, iv interval, tm time,
  u uuid, j json, jb jsonb, arr int[], tarr text[], mood diff_mood,
  rng int4range, ip inet, bits bit varying(16)
);
INSERT INTO diff_types VALUES
  (1, 1, 2, 3, 4.5, 1.25, 2.5, 'hello', 'v', 'c', '\x00ff', true,
   '2024-02-29', '2024-01-01 12:34:56.789', '2024-01-01 12:34:56+02', '1 day 2 hours', '23:59:59',
   'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2]}', '{"b": {"c": null}}', '{1,2,3}', '{"x","y z",NULL}', 'happy',
   '[1,10)', '192.168.0.1/24', B'1010'),
  (2, -32768, -2147483648, -9223372036854775808, -99999999999999.999999, 'NaN', '-Infinity',
   '', '', '', '', false, '0001-01-01', '1970-01-01 00:00:00', '1970-01-01 00:00:00+00', '-1 mons', '00:00:00',
   '00000000-0000-0000-0000-000000000000', '[]', '[]', '{}', '{}', 'sad', 'empty', '::1', B''),
  (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
   NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
  (4, 32767, 2147483647, 9223372036854775807, 0.000001, 3.4e38, 1e308, 'ünïcødé ✓ 日本', 'quote''s', 'abcde',
   '\xdeadbeef', true, '9999-12-31', '2000-02-29 00:00:00.000001', '2038-01-19 03:14:07+00', '1 year 2 mons 3 days 04:05:06.789', '12:00',
   'ffffffff-ffff-ffff-ffff-ffffffffffff', '{"k": "\u00e9"}', '{"k": [true, false, 1.5e3]}', '{-1,0,1}', '{"\"quoted\"","back\\slash"}', 'ok',
   '(,5]', '10.0.0.0/8', B'1111000011110000');
INSERT INTO diff_types (id, t, i4) SELECT g, repeat(md5(g::text), 20), g FROM generate_series(5, 2000) g;
