//! Background WAL checkpoints for the SQLite backend.
//!
//! Every durable commit appends its pages to the WAL; a checkpoint copies them
//! back into the database file and fsyncs it. Left to SQLite's automatic
//! checkpoint, that copy runs on the writer thread right after a commit, every
//! 1,000 WAL pages — and under load that was about a fifth of what the writer
//! wrote, with two extra fsyncs, while every queued append waited. Here a
//! second connection on its own thread runs `PASSIVE` checkpoints, which never
//! block the writer (nor wait for it), so the copying overlaps the writer's
//! next groups; checkpointing less often also lets a page rewritten by many
//! commits (a stream's row, the position counter) be copied once.
//!
//! A passive checkpoint cannot finish while commits keep arriving, and the WAL
//! only restarts from its beginning after a finished one. The writer therefore
//! keeps SQLite's automatic checkpoint at [`WRITER_CHECKPOINT_PAGES`]: by then
//! this thread has copied nearly all of the WAL, so the writer only copies the
//! rest, and the WAL file stays bounded.
//!
//! Durability is untouched: a commit is acknowledged after its WAL frames are
//! fsynced (`synchronous=FULL`), whoever later copies them; a checkpoint with
//! `synchronous=FULL` fsyncs the WAL before copying and the database after.

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rusqlite::Connection;

/// The WAL size (pages) at which the writer checkpoints what this thread has
/// not yet copied; SQLite's default is 1,000 (~4 MiB).
pub(crate) const WRITER_CHECKPOINT_PAGES: u32 = 16_000;

/// Least time between two background checkpoints: each costs two fsyncs,
/// and a longer gap lets a page rewritten by many commits be copied once; but
/// whatever this thread has not copied when the WAL reaches
/// [`WRITER_CHECKPOINT_PAGES`] the writer copies, with every queued append
/// waiting. At 50 ms that stall was what 64 writers' p99 showed (23–25 ms
/// against 10–12 ms at 10 ms, for about the same throughput).
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Wakes the checkpointer; dropping it stops and joins the thread.
pub(crate) struct Checkpointer {
    poke: Option<mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread on its own connection to `path`.
    pub(crate) fn start(conn: Connection, path: &Path) -> std::io::Result<Self> {
        // One pending poke is enough: the checkpoint it causes covers every
        // commit made before it starts.
        let (poke, rx) = mpsc::sync_channel(1);
        let path = path.display().to_string();
        let thread = std::thread::Builder::new()
            .name("trellis-wal-ckpt".into())
            .spawn(move || run(&conn, &rx, &path))?;
        Ok(Checkpointer {
            poke: Some(poke),
            thread: Some(thread),
        })
    }

    /// Tells the checkpointer that a commit added to the WAL; never blocks.
    pub(crate) fn committed(&self) {
        if let Some(poke) = &self.poke {
            let _ = poke.try_send(());
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.poke.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(conn: &Connection, rx: &mpsc::Receiver<()>, path: &str) {
    let mut pending = false;
    loop {
        if !pending && rx.recv().is_err() {
            return;
        }
        pending = false;
        checkpoint(conn, path);
        // Pokes that arrive within MIN_INTERVAL make one checkpoint after it.
        let until = Instant::now() + MIN_INTERVAL;
        loop {
            match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(()) => pending = true,
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                // The writer stopped; closing the last connection checkpoints.
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

fn checkpoint(conn: &Connection, path: &str) {
    let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
    });
    match result {
        Ok((wal_pages, copied)) => {
            tracing::trace!(path, wal_pages, copied, "sqlite background checkpoint");
        }
        // The next commit pokes again, and the writer's own checkpoint is the backstop.
        Err(e) => tracing::warn!(path, error = %e, "sqlite background checkpoint failed"),
    }
}
