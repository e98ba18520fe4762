//! `sum.txt`: the durable total. Owns every read and write of the file and
//! its lock; knows nothing of the broker.
//!
//! An update holds an exclusive `File::lock` on the sidecar `<file>.lock`
//! (a file that is never renamed, so every totaler locks the same inode)
//! across the whole read-modify-write: re-read `sum.txt` under the lock,
//! apply, write `<file>.tmp`, fsync it, rename it over `sum.txt`, fsync the
//! directory. Only then does the caller ack. A corrupt file is reported with
//! its path and the problem, and is never overwritten.

pub mod state;

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

pub use state::{Outcome, State};

/// The ledger file and its lock.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    tmp: PathBuf,
    dir: PathBuf,
    lock: File,
}

/// What can go wrong with the ledger.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file exists but is not a valid ledger. Fatal: never overwritten.
    #[error("ledger {path} is corrupt: {problem}; refusing to start from it or overwrite it")]
    Corrupt { path: PathBuf, problem: String },
    /// The disk failed (full, I/O error, permissions). Retryable.
    #[error("ledger {path}: {action} failed: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
}

/// What an update did.
#[derive(Debug)]
pub struct Update<R> {
    /// The state now on disk.
    pub state: State,
    /// What the closure returned.
    pub result: R,
    /// From taking the lock to the directory fsync.
    pub elapsed: Duration,
}

impl Ledger {
    /// Opens the ledger at `path`, creating the directory and, when missing,
    /// a file holding a zero total. Fails on a corrupt file.
    pub fn open(path: &Path) -> Result<(Self, State), Error> {
        let dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&dir).map_err(io_error(&dir, "creating the directory"))?;
        let lock_path = with_suffix(path, ".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error(&lock_path, "opening the lock file"))?;
        let ledger = Self {
            path: path.to_path_buf(),
            tmp: with_suffix(path, ".tmp"),
            dir,
            lock,
        };
        let update = ledger.update(|_| ())?;
        Ok((ledger, update.state))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file without the lock: renames are atomic, so this sees
    /// one complete version. A missing file reads as an empty ledger.
    pub fn read(&self) -> Result<State, Error> {
        match fs::read_to_string(&self.path) {
            Ok(text) => State::parse(&text).map_err(|problem| self.corrupt(problem)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                Err(self.corrupt("the file is not UTF-8 text".into()))
            }
            Err(e) => Err(io_error(&self.path, "reading")(e)),
        }
    }

    /// Locks, re-reads, applies `change`, and makes the result durable before
    /// returning. Blocking: call it from a blocking thread.
    pub fn update<R>(&self, change: impl FnOnce(&mut State) -> R) -> Result<Update<R>, Error> {
        self.lock.lock().map_err(io_error(&self.path, "locking"))?;
        let started = Instant::now();
        let result = self.update_locked(change);
        let _ = self.lock.unlock();
        result.map(|(state, result)| Update {
            state,
            result,
            elapsed: started.elapsed(),
        })
    }

    fn update_locked<R>(&self, change: impl FnOnce(&mut State) -> R) -> Result<(State, R), Error> {
        let exists = self.path.exists();
        let mut state = self.read()?;
        let before = state.clone();
        let result = change(&mut state);
        if state != before || !exists {
            self.write(&state)?;
        }
        Ok((state, result))
    }

    fn write(&self, state: &State) -> Result<(), Error> {
        let mut file =
            File::create(&self.tmp).map_err(io_error(&self.tmp, "creating the temp file"))?;
        file.write_all(state.render().as_bytes())
            .map_err(io_error(&self.tmp, "writing the temp file"))?;
        file.sync_all()
            .map_err(io_error(&self.tmp, "fsyncing the temp file"))?;
        drop(file);
        fs::rename(&self.tmp, &self.path)
            .map_err(io_error(&self.path, "renaming the temp file over it"))?;
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error(&self.dir, "fsyncing the directory"))
    }

    fn corrupt(&self, problem: String) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            problem,
        }
    }
}

impl Error {
    pub fn is_corrupt(&self) -> bool {
        matches!(self, Error::Corrupt { .. })
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn io_error(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io {
        path,
        action,
        source,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tally-ledger-{name}-{}", Uuid::new_v4()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn missing_file_starts_at_zero_and_is_created_with_its_directory() {
        let path = temp_dir("missing").join("nested/sum.txt");
        let (_ledger, state) = Ledger::open(&path).unwrap();
        assert_eq!(state.total, 0);
        assert_eq!(fs::read_to_string(&path).unwrap(), "0\ntally-ledger v1\n");
    }

    #[test]
    fn corrupt_file_is_refused_and_left_as_it_was() {
        let path = temp_dir("corrupt").join("sum.txt");
        fs::write(&path, "12abc\n").unwrap();
        let error = Ledger::open(&path).unwrap_err();
        assert!(error.is_corrupt());
        assert!(
            error.to_string().contains(&path.display().to_string()),
            "{error}"
        );
        assert!(error.to_string().contains("line 1"), "{error}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "12abc\n");
    }

    #[test]
    fn update_is_durable_and_seen_by_a_second_handle() {
        let path = temp_dir("two").join("sum.txt");
        let (first, _) = Ledger::open(&path).unwrap();
        let (second, _) = Ledger::open(&path).unwrap();
        let source = Uuid::from_u128(9);
        first.update(|state| state.apply(source, 1, 5)).unwrap();
        let update = second.update(|state| state.apply(source, 1, 5)).unwrap();
        assert_eq!(update.result, Outcome::Duplicate);
        assert_eq!(update.state.total, 5);
        assert_eq!(second.read().unwrap().total, 5);
    }

    #[test]
    fn concurrent_updates_from_threads_with_own_handles_are_exact() {
        let path = temp_dir("threads").join("sum.txt");
        Ledger::open(&path).unwrap();
        let source = Uuid::from_u128(3);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let (ledger, _) = Ledger::open(&path).unwrap();
                    for i in 0..50 {
                        ledger
                            .update(|state| state.apply(source, t * 1000 + i + 1, 1))
                            .unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(Ledger::open(&path).unwrap().1.total, 200);
    }
}
