//! The SQLite writer thread: group commit.
//!
//! Every write request is a [`Job`] queued to this thread. The thread opens one
//! `BEGIN IMMEDIATE` transaction, runs each job inside its own `SAVEPOINT` (a
//! job that fails is rolled back to its savepoint alone) as the jobs arrive,
//! commits once with `synchronous=FULL` — one fsync for the whole group — and
//! only then answers each job. No job is acknowledged before the commit that
//! contains it is durable; if that commit fails, every job in the group gets
//! the error and none of them was written.
//!
//! # Which jobs make a group
//!
//! A group takes the jobs carried over from the last one (or waits for the
//! next), then everything queued (up to [`MAX_GROUP`]). With many callers that
//! each write again once answered, the callers of one commit come back while
//! the next group runs; taking only what is queued, groups settled into two
//! halves that alternated — two commits, two fsyncs, per round of callers (38–45
//! of 64 single-event appenders per commit). So the writer keeps the
//! transaction open a little longer for the callers it just answered: until as
//! many jobs as it answered plus those that were already queued have arrived,
//! for at most [`GATHER_FRACTION`] of the last commit's duration (and
//! [`MAX_GATHER`]). Waiting is worth it only while it costs less than the
//! commit it saves, hence the bound; jobs that arrive meanwhile run at once, so
//! the window overlaps their work. A caller writing alone is never waited for.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::checkpoint::Checkpointer;
use crate::tx::{run_on_commit, OnCommit, Tx, TxBody, TxConn};
use crate::StoreError;

/// The most jobs one group commit takes; bounds the latency of the first job in a burst.
pub const MAX_GROUP: usize = 1024;

/// The longest a group waits for more jobs (see the module docs).
const MAX_GATHER: Duration = Duration::from_millis(1);

/// A group waits for more jobs at most 1/n of the last commit's duration.
const GATHER_FRACTION: u32 = 2;

pub(crate) trait Job: Send {
    /// Runs the job's body inside the current savepoint; true if it succeeded.
    fn run(&mut self, conn: &Mutex<Connection>) -> bool;
    /// Answers the caller once the group's commit is known.
    fn finish(self: Box<Self>, commit: Option<&StoreError>);
}

pub(crate) struct WriteJob<F, T, E> {
    pub(crate) prefix: Arc<str>,
    pub(crate) body: Option<F>,
    pub(crate) out: Option<Result<T, E>>,
    /// Runs after the group's commit, before the reply (see `Namespace::write_then`).
    pub(crate) committed: Option<OnCommit<T>>,
    pub(crate) reply: oneshot::Sender<Result<T, E>>,
}

impl<F, T, E> Job for WriteJob<F, T, E>
where
    F: TxBody<T, E>,
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
{
    fn run(&mut self, conn: &Mutex<Connection>) -> bool {
        let Some(body) = self.body.take() else {
            return false;
        };
        let tx = Tx {
            prefix: &self.prefix,
            conn: TxConn::Sqlite(conn),
        };
        let result =
            std::panic::catch_unwind(AssertUnwindSafe(|| futures::executor::block_on(body(&tx))))
                .unwrap_or_else(|_| Err(E::from(StoreError::Panicked)));
        let ok = result.is_ok();
        self.out = Some(result);
        ok
    }

    fn finish(self: Box<Self>, commit: Option<&StoreError>) {
        let result = match (self.out, commit) {
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(_)), Some(err)) => Err(E::from(StoreError::CommitFailed(err.to_string()))),
            (Some(Ok(v)), None) => {
                // Durable: the group's fsync returned. Jobs finish in the order
                // they ran, so hooks see commits in order.
                run_on_commit(self.committed, &v);
                Ok(v)
            }
            (None, err) => Err(E::from(StoreError::CommitFailed(
                err.map_or_else(|| "the job did not run".into(), ToString::to_string),
            ))),
        };
        // The caller may have gone away; its write is durable regardless.
        let _ = self.reply.send(result);
    }
}

/// Counters of the writer thread, to see group commit at work.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) commits: std::sync::atomic::AtomicU64,
    pub(crate) writes: std::sync::atomic::AtomicU64,
}

/// Runs a parameterless statement through the statement cache: savepoints are
/// issued twice per write, so parsing them each time would show.
fn run_cached(conn: &Mutex<Connection>, sql: &str) -> rusqlite::Result<()> {
    conn.lock().prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Runs one job in its own savepoint, rolling back to it if the job fails.
fn run_job(conn: &Mutex<Connection>, job: &mut Box<dyn Job>) {
    if let Err(e) = run_cached(conn, "SAVEPOINT job") {
        // The job never ran: `finish` tells its caller so.
        tracing::error!(error = %e, "sqlite savepoint failed");
        return;
    }
    let ok = job.run(conn);
    let end = if ok {
        run_cached(conn, "RELEASE job")
    } else {
        run_cached(conn, "ROLLBACK TO job").and_then(|_| run_cached(conn, "RELEASE job"))
    };
    if let Err(e) = end {
        tracing::error!(error = %e, "sqlite savepoint release failed");
    }
}

/// What the next group expects, learnt from the last one.
struct Gather {
    /// Jobs that were queued while the last group ran, taken before it was answered.
    carry: Vec<Box<dyn Job>>,
    /// How many jobs to wait for: the carried ones plus the callers just answered.
    expect: usize,
    /// How long to wait for them.
    wait: Duration,
}

/// The jobs of one group commit, in the order they ran.
type Group = Vec<Box<dyn Job>>;

/// Runs one group in one transaction and commits it. Returns the jobs (run or
/// not) and the commit's outcome, or `None` once the queue is closed and empty.
fn run_group(
    conn: &Mutex<Connection>,
    rx: &mpsc::Receiver<Box<dyn Job>>,
    gather: &mut Gather,
) -> Option<(Group, Result<(), StoreError>)> {
    let mut pending = std::mem::take(&mut gather.carry);
    if pending.is_empty() {
        pending.push(rx.recv().ok()?);
    }
    let deadline = Instant::now() + gather.wait;
    if let Err(e) = conn.lock().execute_batch("BEGIN IMMEDIATE") {
        return Some((pending, Err(e.into())));
    }
    let mut group: Group = Vec::with_capacity(gather.expect.max(pending.len()));
    let target = gather.expect.min(MAX_GROUP);
    loop {
        for mut job in pending.drain(..) {
            run_job(conn, &mut job);
            group.push(job);
        }
        let room = MAX_GROUP - group.len();
        if room == 0 {
            break;
        }
        // What is queued joins at once; more is waited for only until the deadline.
        if let Ok(job) = rx.try_recv() {
            pending.push(job);
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if group.len() >= target || left.is_zero() {
            break;
        }
        match rx.recv_timeout(left) {
            Ok(job) => pending.push(job),
            // Timed out, or the store is closing: commit what there is.
            Err(_) => break,
        }
    }
    let began = Instant::now();
    let commit = conn
        .lock()
        .execute_batch("COMMIT")
        .map_err(StoreError::from);
    let took = began.elapsed();
    if commit.is_err() {
        let _ = conn.lock().execute_batch("ROLLBACK");
    }
    // Jobs queued while this group ran come from other callers: take them
    // before answering, so the next group can tell them from the answered
    // callers' next writes.
    while gather.carry.len() < MAX_GROUP {
        match rx.try_recv() {
            Ok(job) => gather.carry.push(job),
            Err(_) => break,
        }
    }
    gather.expect = gather.carry.len() + group.len();
    gather.wait = (took / GATHER_FRACTION).min(MAX_GATHER);
    Some((group, commit))
}

pub(crate) fn writer_loop(
    conn: Mutex<Connection>,
    rx: mpsc::Receiver<Box<dyn Job>>,
    counters: &Counters,
    checkpointer: &Checkpointer,
) {
    let mut gather = Gather {
        carry: Vec::new(),
        expect: 0,
        wait: Duration::ZERO,
    };
    while let Some((group, commit)) = run_group(&conn, &rx, &mut gather) {
        let err = commit.err();
        if err.is_none() {
            checkpointer.committed();
            counters.commits.fetch_add(1, Relaxed);
            counters.writes.fetch_add(group.len() as u64, Relaxed);
        }
        for job in group {
            job.finish(err.as_ref());
        }
    }
}
