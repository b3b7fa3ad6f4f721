//! The threads pgsplit runs on.
//!
//! `scheduler = "work-stealing"` (the default): tokio's multi-threaded runtime, every task on
//! any worker; with `worker_threads = 1`, its current-thread runtime.
//!
//! `scheduler = "per-core"`: one tokio current-thread runtime per thread, a
//! *shard*. The main thread's runtime is shard 0 and also runs the monitor, the failover wing,
//! the console's listener and the metrics; shards 1.. run only clients. The listener (on shard 0)
//! hands each new client to the shard with the fewest clients, where its session runs for good:
//! its socket, its server connections and every wake-up stay on one thread (no work stealing, no
//! wake-ups across threads). Server connections remember the shard that opened them and the pool
//! hands a shard its own first (`pool::Pool::pop_idle`). On the 2-core test machine, shared
//! with the servers and pgbench, it measured within noise of work stealing (README,
//! Performance), so work stealing stays the default: it also evens out clients of unequal load.
//!
//! Why not a SO_REUSEPORT listener per shard: the kernel spreads connections by a hash of the
//! client's address and port, so 16 clients land 10/6 or worse on two shards and the busier one
//! sets the pace; handing a client over costs two `epoll_ctl`s once per connection.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::runtime::{Handle, Runtime};

use crate::config::Scheduler;

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(0) };
}

/// The shard this thread runs (0 off the shards: the main thread, tests, the work-stealing
/// scheduler's workers).
pub fn current() -> usize {
    SHARD.with(Cell::get)
}

/// The client-serving shards besides the main thread's runtime.
pub struct Shards {
    /// One per shard; index 0 is the main thread's runtime.
    handles: Vec<Handle>,
    /// Clients on each shard now.
    clients: Vec<AtomicUsize>,
}

/// A client counted on its shard while its session runs.
struct OnShard {
    shards: Arc<Shards>,
    shard: usize,
}

impl Drop for OnShard {
    fn drop(&mut self) {
        self.shards.clients[self.shard].fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shards {
    /// `extra` more current-thread runtimes, each on a thread of its own, beside `main` (the
    /// runtime the caller runs on, shard 0).
    pub fn start(main: Handle, extra: usize) -> Result<Arc<Shards>, String> {
        let mut handles = vec![main];
        for i in 1..=extra {
            let rt = current_thread()?;
            handles.push(rt.handle().clone());
            std::thread::Builder::new()
                .name(format!("pgsplit-shard-{i}"))
                .spawn(move || {
                    SHARD.with(|s| s.set(i));
                    rt.block_on(std::future::pending::<()>());
                })
                .map_err(|e| format!("cannot start shard thread {i}: {e}"))?;
        }
        let clients = handles.iter().map(|_| AtomicUsize::new(0)).collect();
        Ok(Arc::new(Shards { handles, clients }))
    }

    /// Clients on each shard now.
    pub fn clients(&self) -> Vec<usize> {
        self.clients.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }

    /// The shard with the fewest clients (the lowest index on a tie).
    fn pick(&self) -> usize {
        let mut best = 0;
        for (i, c) in self.clients.iter().enumerate() {
            if c.load(Ordering::Relaxed) < self.clients[best].load(Ordering::Relaxed) {
                best = i;
            }
        }
        best
    }

    /// Runs `serve` for a client accepted on this thread's runtime, on the least busy shard.
    pub fn hand_over<F, Fut>(self: &Arc<Self>, stream: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let shard = self.pick();
        self.clients[shard].fetch_add(1, Ordering::Relaxed);
        let on = OnShard { shards: self.clone(), shard };
        if shard == current() {
            tokio::spawn(async move {
                let _on = on;
                serve(stream).await
            });
            return;
        }
        // Out of this runtime's reactor, into the shard's (the socket stays non-blocking).
        let std = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot hand a client over to shard {shard}: {e}");
                return;
            }
        };
        self.handles[shard].spawn(async move {
            let _on = on;
            match TcpStream::from_std(std) {
                Ok(stream) => serve(stream).await,
                Err(e) => tracing::warn!("shard {shard} cannot take a client: {e}"),
            }
        });
    }
}

fn current_thread() -> Result<Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

/// The runtime `main` blocks on, and how many shards beside it (`threads`: 0 = one per core).
pub fn build(threads: usize, scheduler: Scheduler) -> Result<(Runtime, usize), String> {
    let threads = if threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { threads };
    match scheduler {
        Scheduler::PerCore => Ok((current_thread()?, threads - 1)),
        Scheduler::WorkStealing if threads == 1 => Ok((current_thread()?, 0)),
        Scheduler::WorkStealing => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .worker_threads(threads)
                .build()
                .map_err(|e| format!("cannot start the runtime: {e}"))?;
            Ok((rt, 0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_go_to_the_least_busy_shard_and_leave_it() {
        let rt = current_thread().unwrap();
        rt.block_on(async {
            let shards = Shards::start(Handle::current(), 2).unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
            let mut clients = Vec::new();
            for _ in 0..6 {
                clients.push(TcpStream::connect(addr).await.unwrap());
                let (stream, _) = listener.accept().await.unwrap();
                let tx = seen_tx.clone();
                shards.hand_over(stream, move |mut s| async move {
                    let _ = tx.send(current());
                    // Serve until the client hangs up.
                    let mut b = [0u8; 1];
                    let _ = tokio::io::AsyncReadExt::read(&mut s, &mut b).await;
                });
            }
            let mut ran_on = Vec::new();
            for _ in 0..6 {
                ran_on.push(seen_rx.recv().await.unwrap());
            }
            ran_on.sort();
            assert_eq!(ran_on, vec![0, 0, 1, 1, 2, 2], "each session runs on the thread of its shard");
            assert_eq!(shards.clients(), vec![2, 2, 2]);
            drop(clients);
            for _ in 0..200 {
                if shards.clients() == vec![0, 0, 0] {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            panic!("sessions that ended still counted: {:?}", shards.clients());
        });
    }
}
