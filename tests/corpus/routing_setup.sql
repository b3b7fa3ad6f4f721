-- Objects the routing corpus (routing.tsv) names, beyond the test schema (t, s, portview, bump).
CREATE TABLE u (id int PRIMARY KEY, w text);
INSERT INTO u SELECT g, chr(97 + g % 26) || g FROM generate_series(1, 20) g;
CREATE TABLE tree (id int PRIMARY KEY, parent int);
INSERT INTO tree VALUES (1, NULL), (2, 1), (3, 1), (4, 2);
CREATE TABLE items (id int PRIMARY KEY, name text, price numeric(10, 2), tags text[], meta jsonb,
                    created timestamptz DEFAULT '2024-01-01 00:00+00');
INSERT INTO items (id, name, price, tags, meta) VALUES (1, 'a', 12.5, '{x,y}', '{"a": 1}'), (2, 'b', NULL, '{}', '{}');
CREATE TABLE docs (id int, body text, tsv tsvector);
CREATE MATERIALIZED VIEW mv AS SELECT id, v FROM t WHERE id <= 10;
CREATE VIEW v_items AS SELECT id, upper(name) AS name FROM items;
CREATE TABLE parted (k int, x text) PARTITION BY LIST (k);
CREATE TABLE parted_1 PARTITION OF parted FOR VALUES IN (1);
INSERT INTO parted VALUES (1, 'one');
CREATE FUNCTION report(n int) RETURNS SETOF t LANGUAGE sql STABLE AS $$ SELECT * FROM t WHERE id <= n $$;
CREATE FUNCTION report_sum(n int) RETURNS bigint LANGUAGE sql STABLE AS $$ SELECT sum(v) FROM t WHERE id <= n $$;
CREATE FUNCTION uuid_generate_v4() RETURNS uuid LANGUAGE sql VOLATILE AS $$ SELECT gen_random_uuid() $$;
-- Reading this view writes (bump inserts a row).
CREATE VIEW writing_view AS SELECT bump() AS port;
