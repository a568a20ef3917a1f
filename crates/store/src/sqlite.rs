//! The embedded SQLite backend: one file in WAL mode, one writer thread doing
//! group commit (see [`crate::writer`]), a background checkpointer (see
//! [`crate::checkpoint`]), and a small pool of reader connections.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use crate::checkpoint::{Checkpointer, WRITER_CHECKPOINT_PAGES};
use crate::tx::{OnCommit, Tx, TxBody, TxConn};
use crate::writer::{writer_loop, Counters, Job, WriteJob};
use crate::StoreError;

/// The writer connection's page cache, in KiB (`cache_size` takes it negated).
/// 16 and 64 MiB measured alike (64 writers x 100 events: ~870 KiB written per
/// append against ~1,550 with SQLite's 2 MiB default); 32 MiB leaves headroom
/// for larger indexes without holding much memory.
const WRITER_CACHE_KIB: i64 = 32 * 1024;

/// The page size of a new store, in bytes. A commit writes every page it
/// dirtied to the WAL whole, and an append dirties a page at a random place
/// in each index it touches (the stream's `(stream, version)` entry, its
/// `streams` row), so smaller pages mean fewer bytes to fsync per group;
/// but a read of `$all` walks more of them. Measured with 64 single-event
/// writers and reads of `$all` (`docs/benchmarks/events.md`, session 5):
/// 4 KiB wrote 5.7 KiB of WAL per append and read 831k events/s; 2 KiB
/// 3.4 KiB and 631k/s; 1 KiB 2.3 KiB and 525–587k/s, with more CPU per
/// append than either. 2 KiB keeps most of the write saving and reads well
/// above the 500k/s the event store promises.
const PAGE_SIZE: u32 = 2048;

/// Idle reader connections kept open.
const MAX_IDLE_READERS: usize = 8;

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
        // Only a new, empty database takes it (before WAL mode is set); an
        // existing store keeps the page size it was created with.
        conn.pragma_update(None, "page_size", PAGE_SIZE)?;
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
        // A group of 64 appends dirties ~250 pages; with SQLite's default
        // cache (2 MiB) the pager spilled dirty pages to the WAL mid-group and
        // wrote them again at commit, and re-read index pages from the file.
        conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
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

    pub(crate) async fn write<T, E, F>(
        &self,
        prefix: Arc<str>,
        body: F,
        committed: Option<OnCommit<T>>,
    ) -> Result<T, E>
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
            committed,
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
