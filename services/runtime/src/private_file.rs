//! Files only this user may read (mode 0600), made once and never seen half-written: the keys a
//! data directory keeps (the development signing key, the event key), which replicas started
//! together on one directory must all read the same.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

/// Makes `path` with `contents` (mode 0600) unless it exists; returns whether this call made it.
/// The contents are written and synced to a file of their own first and then linked to `path`,
/// which fails if `path` exists: whoever finds `path` finds it whole.
fn create_once(path: &Path, contents: &[u8]) -> std::io::Result<bool> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("private");
    let tmp = path.with_file_name(format!(
        ".{name}.{}.{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(contents)?;
            f.sync_all()
        });
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// The contents of `path`, made by `make` (with [`create_once`]) when there is no such file: a
/// process that finds the file, or loses the race to make it, reads what is there.
pub(crate) fn made_once(path: &Path, make: impl FnOnce() -> String) -> std::io::Result<String> {
    if !path.exists() {
        let contents = make();
        if create_once(path, contents.as_bytes())? {
            return Ok(contents);
        }
    }
    std::fs::read_to_string(path)
}

/// Test helper: for `rounds` fresh directories, starts six threads at once on each, each calling
/// `load` (a key made once in the directory); every call must succeed and all must agree.
#[cfg(test)]
pub(crate) fn all_starting_together_agree<T: PartialEq + std::fmt::Debug + Send>(
    rounds: usize,
    load: impl Fn(&Path) -> anyhow::Result<T> + Sync,
) {
    for round in 0..rounds {
        let dir = tempfile::tempdir().expect("tempdir");
        let got: Vec<T> = std::thread::scope(|s| {
            let starts: Vec<_> = (0..6).map(|_| s.spawn(|| load(dir.path()))).collect();
            starts
                .into_iter()
                .map(|t| {
                    t.join()
                        .expect("thread")
                        .unwrap_or_else(|e| panic!("round {round}: {e:#}"))
                })
                .collect()
        });
        assert!(got.iter().all(|g| *g == got[0]), "round {round}: {got:?}");
    }
}
