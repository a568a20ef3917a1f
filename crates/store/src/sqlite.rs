//! The embedded SQLite backend: one file in WAL mode, one writer thread doing
//! group commit, and a small pool of reader connections.
//!
//! Group commit: every write request is a job queued to the writer thread.
//! The thread takes the first job and everything else already queued (up to
//! [`MAX_GROUP`]), opens one `BEGIN IMMEDIATE` transaction, runs each job
//! inside its own `SAVEPOINT` (a job that fails is rolled back to its savepoint
//! alone), commits once with `synchronous=FULL` — one fsync for the whole
//! group — and only then answers each job. No job is acknowledged before the
//! commit that contains it is durable; if that commit fails, every job in the
//! group gets the error and none of them was written.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use crate::checkpoint::{Checkpointer, WRITER_CHECKPOINT_PAGES};
use crate::tx::{Tx, TxBody, TxConn};
use crate::StoreError;

/// The most jobs one group commit takes; bounds the latency of the first job in a burst.
pub const MAX_GROUP: usize = 1024;

/// The longest the writer waits to gather a group (see [`next_group`]).
const MAX_GATHER: Duration = Duration::from_millis(1);

/// The writer waits for a group at most this fraction (1/n) of the last commit's duration.
const GATHER_FRACTION: u32 = 2;

/// Idle reader connections kept open.
const MAX_IDLE_READERS: usize = 8;

trait Job: Send {
    /// Runs the job's body inside the current savepoint; true if it succeeded.
    fn run(&mut self, conn: &Mutex<Connection>) -> bool;
    /// Answers the caller once the group's commit is known.
    fn finish(self: Box<Self>, commit: Option<&StoreError>);
}

struct WriteJob<F, T, E> {
    prefix: Arc<str>,
    body: Option<F>,
    out: Option<Result<T, E>>,
    reply: oneshot::Sender<Result<T, E>>,
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
            (Some(Ok(v)), None) => Ok(v),
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

pub(crate) struct Sqlite {
    pub(crate) counters: Arc<Counters>,
    jobs: Mutex<Option<mpsc::Sender<Box<dyn Job>>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    readers: Arc<Mutex<Vec<Mutex<Connection>>>>,
    path: PathBuf,
}

fn open_conn(path: &Path, write: bool) -> Result<Connection, StoreError> {
    let mut flags = OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    flags |= if write {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.set_prepared_statement_cache_capacity(128);
    if write {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: the WAL is fsynced at every commit, so an acknowledged write survives power loss.
        conn.pragma_update(None, "synchronous", "FULL")?;
    }
    Ok(conn)
}

impl Sqlite {
    pub(crate) fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let conn = open_conn(path, true)?;
        // The checkpointer copies the WAL into the database off the writer
        // thread; the writer's own checkpoint is only the backstop.
        conn.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)?;
        let checkpointer = Checkpointer::start(open_conn(path, true)?, path)?;
        let (tx, rx) = mpsc::channel::<Box<dyn Job>>();
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let writer = std::thread::Builder::new()
            .name("trellis-sqlite-writer".into())
            .spawn(move || writer_loop(Mutex::new(conn), rx, &c, &checkpointer))?;
        Ok(Sqlite {
            counters,
            jobs: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            readers: Arc::new(Mutex::new(Vec::new())),
            path: path.to_owned(),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) async fn write<T, E, F>(&self, prefix: Arc<str>, body: F) -> Result<T, E>
    where
        F: TxBody<T, E>,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job = Box::new(WriteJob {
            prefix,
            body: Some(body),
            out: None,
            reply,
        });
        let sent = match self.jobs.lock().as_ref() {
            Some(jobs) => jobs.send(job).is_ok(),
            None => false,
        };
        if !sent {
            return Err(E::from(StoreError::Closed));
        }
        rx.await
            .unwrap_or_else(|_| Err(E::from(StoreError::Closed)))
    }

    pub(crate) async fn read<T, E, F>(&self, prefix: Arc<str>, body: F) -> Result<T, E>
    where
        F: TxBody<T, E>,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let readers = self.readers.clone();
        let path = self.path.clone();
        let task = tokio::task::spawn_blocking(move || {
            let conn = match readers.lock().pop() {
                Some(c) => c,
                None => Mutex::new(open_conn(&path, false).map_err(E::from)?),
            };
            let result = run_read(&conn, &prefix, body);
            let mut idle = readers.lock();
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
            result
        });
        task.await
            .unwrap_or_else(|_| Err(E::from(StoreError::Panicked)))
    }

    /// Stops the writer after it drains what is queued.
    pub(crate) fn close(&self) {
        self.jobs.lock().take();
        if let Some(handle) = self.writer.lock().take() {
            let _ = handle.join();
        }
        self.readers.lock().clear();
    }
}

fn run_read<T, E, F>(conn: &Mutex<Connection>, prefix: &str, body: F) -> Result<T, E>
where
    F: TxBody<T, E>,
    E: From<StoreError>,
{
    // A read transaction gives the body one consistent snapshot across its queries.
    conn.lock()
        .execute_batch("BEGIN DEFERRED")
        .map_err(|e| E::from(e.into()))?;
    let tx = Tx {
        prefix,
        conn: TxConn::Sqlite(conn),
    };
    let result =
        std::panic::catch_unwind(AssertUnwindSafe(|| futures::executor::block_on(body(&tx))))
            .unwrap_or_else(|_| Err(E::from(StoreError::Panicked)));
    let _ = conn.lock().execute_batch("COMMIT");
    result
}

/// Runs a parameterless statement through the statement cache: savepoints are
/// issued twice per write, so parsing them each time would show.
fn run_cached(conn: &Mutex<Connection>, sql: &str) -> rusqlite::Result<()> {
    conn.lock().prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Takes the jobs already queued (up to [`MAX_GROUP`]) without waiting.
fn drain(rx: &mpsc::Receiver<Box<dyn Job>>, group: &mut Vec<Box<dyn Job>>) {
    while group.len() < MAX_GROUP {
        match rx.try_recv() {
            Ok(job) => group.push(job),
            Err(_) => break,
        }
    }
}

/// The next group: the jobs carried over, or the next to arrive, plus what is
/// queued; then, for at most `wait`, more until there are `expect`.
///
/// Why wait: with many callers that each write again once answered, a group
/// commit's callers return while the next group runs, and without waiting
/// groups settle into two halves that alternate — two commits (two fsyncs) per
/// round of callers. Waiting briefly for the callers just answered lets one
/// commit take them all; it is worth it only while it costs less than the
/// commit it saves, hence `wait` is a fraction of the last commit's duration.
/// A caller that writes alone is never waited for: `expect` counts it already.
fn next_group(
    rx: &mpsc::Receiver<Box<dyn Job>>,
    carry: &mut Vec<Box<dyn Job>>,
    expect: usize,
    wait: Duration,
) -> Option<Vec<Box<dyn Job>>> {
    let mut group = std::mem::take(carry);
    if group.is_empty() {
        group.push(rx.recv().ok()?);
    }
    drain(rx, &mut group);
    let target = expect.min(MAX_GROUP);
    let deadline = Instant::now() + wait;
    while group.len() < target {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(job) => {
                group.push(job);
                drain(rx, &mut group);
            }
            // Timed out, or the store is closing: commit what there is.
            Err(_) => break,
        }
    }
    Some(group)
}

fn writer_loop(
    conn: Mutex<Connection>,
    rx: mpsc::Receiver<Box<dyn Job>>,
    counters: &Counters,
    checkpointer: &Checkpointer,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let (mut carry, mut expect, mut wait) = (Vec::new(), 0, Duration::ZERO);
    while let Some(mut group) = next_group(&rx, &mut carry, expect, wait) {
        let (result, commit_took) = run_group(&conn, &mut group);
        let err = result.err();
        if err.is_none() {
            checkpointer.committed();
            counters.commits.fetch_add(1, Relaxed);
            counters.writes.fetch_add(group.len() as u64, Relaxed);
        }
        // Jobs that queued while this group ran come from other callers: take
        // them before answering, so the next group can tell them from the
        // answered callers' next writes (see `next_group`).
        drain(&rx, &mut carry);
        expect = carry.len() + group.len();
        wait = (commit_took / GATHER_FRACTION).min(MAX_GATHER);
        for job in group {
            job.finish(err.as_ref());
        }
    }
}

/// Runs a group in one transaction, each job in its own savepoint, and
/// commits it; also returns how long the commit took.
fn run_group(
    conn: &Mutex<Connection>,
    group: &mut [Box<dyn Job>],
) -> (Result<(), StoreError>, Duration) {
    if let Err(e) = conn.lock().execute_batch("BEGIN IMMEDIATE") {
        return (Err(e.into()), Duration::ZERO);
    }
    for job in group.iter_mut() {
        if let Err(e) = run_cached(conn, "SAVEPOINT job") {
            tracing::error!(error = %e, "sqlite savepoint failed");
            continue;
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
    let began = Instant::now();
    let commit = conn
        .lock()
        .execute_batch("COMMIT")
        .map_err(StoreError::from);
    let took = began.elapsed();
    if commit.is_err() {
        let _ = conn.lock().execute_batch("ROLLBACK");
    }
    (commit, took)
}
