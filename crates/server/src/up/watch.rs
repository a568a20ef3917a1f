//! Reload on file change: the config file's directory is watched (not the
//! file, so an editor's write-to-temp-then-rename and Kubernetes' symlink
//! swap are seen too); after a quiet `reload.debounce` the file is read, and
//! if its bytes changed a reload is requested exactly as SIGHUP does, so it
//! goes through the same validation, the same atomic swap, and the same
//! "config reload rejected" log lines when the new file is invalid.

use std::path::{Path, PathBuf};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::config::LiveConfig;
use crate::shutdown::{Reload, Shutdown};

/// Starts watching `file`; the returned task requests reloads until shutdown.
/// A watch that cannot be set up (no inotify slots left, say) is logged and
/// the node runs on without it: SIGHUP and `POST /v1/reload` still work.
pub(crate) fn watch_file(
    file: PathBuf,
    live: LiveConfig,
    reload: Reload,
    shutdown: Shutdown,
) -> impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static {
    let (tx, rx) = mpsc::unbounded_channel();
    let watcher = start_watcher(&file, tx);
    async move {
        let Some(watcher) = watcher else {
            shutdown.triggered().await;
            return Ok(());
        };
        let _watcher = watcher;
        debounce_loop(file, rx, live, reload, shutdown).await;
        Ok(())
    }
}

fn start_watcher(file: &Path, tx: mpsc::UnboundedSender<()>) -> Option<RecommendedWatcher> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = file.file_name().map(|n| n.to_owned());
    // Behind a symlink (a mounted ConfigMap) the events name other entries.
    let any_entry = std::fs::symlink_metadata(file).is_ok_and(|m| m.file_type().is_symlink());
    let handler = move |event: notify::Result<notify::Event>| match event {
        Ok(event) => {
            let relevant = !matches!(event.kind, EventKind::Access(_))
                && (any_entry
                    || event
                        .paths
                        .iter()
                        .any(|p| p.file_name().map(|n| n.to_owned()) == name));
            if relevant {
                // The receiver is gone only after shutdown.
                let _ = tx.send(());
            }
        }
        Err(e) => tracing::warn!(error = %e, "config file watch error"),
    };
    let started = notify::recommended_watcher(handler)
        .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w));
    match started {
        Ok(w) => {
            tracing::info!(file = %file.display(), "watching the config file for changes");
            Some(w)
        }
        Err(e) => {
            tracing::warn!(
                file = %file.display(),
                error = %e,
                "cannot watch the config file; reload with SIGHUP or POST /v1/reload"
            );
            None
        }
    }
}

async fn debounce_loop(
    file: PathBuf,
    mut events: mpsc::UnboundedReceiver<()>,
    live: LiveConfig,
    reload: Reload,
    shutdown: Shutdown,
) {
    let mut last = std::fs::read(&file).ok();
    loop {
        tokio::select! {
            () = shutdown.triggered() => return,
            e = events.recv() => if e.is_none() { return },
        }
        // Trailing debounce: wait until the directory has been quiet.
        let quiet = live.current().reload.debounce;
        loop {
            tokio::select! {
                () = shutdown.triggered() => return,
                () = tokio::time::sleep(quiet) => break,
                e = events.recv() => if e.is_none() { return },
            }
        }
        // Mid-rename the file may be missing; the create event follows.
        let Ok(now) = tokio::fs::read(&file).await else {
            continue;
        };
        if last.as_ref() == Some(&now) {
            continue;
        }
        last = Some(now);
        if !live.current().reload.watch {
            tracing::debug!("config file changed; not reloading (reload.watch = false)");
            continue;
        }
        let request = reload.request();
        tracing::info!(file = %file.display(), request, "config file changed; reloading");
    }
}
