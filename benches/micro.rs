//! Micro-benchmarks (criterion) of the hot path's pure parts: classifying a statement (cached,
//! uncached, a 1 MB IN list), framing messages, the router's decision.
//! Run: `cargo bench --bench micro` (add `-- --quick` for a short run).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use pgsplit::cluster::Topology;
use pgsplit::protocol::{self, FrameReader};
use pgsplit::router::{SessionView, route};
use pgsplit::sql::cache::{Analysis, AnalysisCache};

const OLTP: &str = "SELECT o.id, o.total, c.name FROM orders o JOIN customers c ON c.id = o.customer_id \
     WHERE o.customer_id = $1 AND o.created_at > now() - interval '30 days' ORDER BY o.created_at DESC LIMIT 20";

fn classification(c: &mut Criterion) {
    let cache = AnalysisCache::new(10_000, 256 * 1024);
    cache.analyze(OLTP);
    c.bench_function("classify: cached OLTP statement", |b| b.iter(|| cache.analyze(black_box(OLTP))));
    c.bench_function("classify: uncached OLTP statement (parse + walk)", |b| {
        b.iter(|| Analysis::of(black_box(OLTP), 256 * 1024))
    });
    c.bench_function("classify: uncached UPDATE", |b| {
        b.iter(|| {
            Analysis::of(black_box("UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2"), 256 * 1024)
        })
    });
    let mut list = String::from("SELECT * FROM t WHERE id IN (");
    let mut i = 0u64;
    while list.len() < 1 << 20 {
        list.push_str(&format!("{i},"));
        i += 1;
    }
    list.push_str("0)");
    let mut g = c.benchmark_group("classify: 1 MB IN list");
    g.sample_size(10);
    // The default bound (routing.max_parse_len 256 KiB) sends it to the primary unparsed...
    g.bench_function("bounded (default)", |b| b.iter(|| Analysis::of(black_box(&list), 256 * 1024)));
    // ...without the bound it is parsed.
    g.bench_function("parsed (no bound)", |b| b.iter(|| Analysis::of(black_box(&list), 4 << 20)));
    g.finish();
}

fn framing(c: &mut Criterion) {
    // 1,000 small messages in one buffer, as a pipelined batch arrives.
    let mut batch = Vec::new();
    for _ in 0..500 {
        batch.extend_from_slice(&protocol::simple_query("SELECT 1"));
        batch.extend_from_slice(&protocol::sync());
    }
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap_or_else(|e| panic!("runtime: {e}"));
    c.bench_function("framing: 1,000 messages from one buffer", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut r = FrameReader::new(std::io::Cursor::new(batch.as_slice()));
                let mut n = 0;
                while let Ok(f) = r.next().await {
                    n += f.bytes.len();
                }
                black_box(n)
            })
        })
    });
}

fn router(c: &mut Criterion) {
    let t = Topology::new("p:1", &["r1:1".into(), "r2:1".into()]);
    let a = Analysis::of("SELECT abalance FROM pgbench_accounts WHERE aid = $1", 1 << 20);
    let mut turn = 0;
    c.bench_function("router: a read, two replicas in rotation", |b| {
        b.iter(|| {
            turn += 1;
            route(a.target, a.reason, a.hint, SessionView::default(), black_box(&t), turn, &[])
        })
    });
}

criterion_group!(benches, classification, framing, router);
criterion_main!(benches);
