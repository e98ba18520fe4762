//! `sum.txt`: the durable total. Owns every read and write of the file and
//! its lock; knows nothing of the broker.
//!
//! An update holds an exclusive `File::lock` on the sidecar `<file>.lock`
//! (a file that is never renamed, so every totaler locks the same inode)
//! across the whole read-modify-write: re-read `sum.txt` under the lock,
//! apply, write `<file>.tmp`, fsync it, rename it over `sum.txt`, fsync the
//! directory. Only then does the caller ack. A corrupt file is reported with
//! its path and the problem, and is never overwritten.
//!
//! The ledger never silently restarts. Each ledger has an id and a
//! generation (bumped by every write); a handle remembers the newest it saw.
//! A file that vanishes, or comes back as another ledger or an older copy,
//! while the totaler runs is a fatal error naming the file. At start, a
//! missing file is created only when nothing shows that one existed (no
//! `<file>.lock`, no `<file>.tmp`) or when the operator asks for a new
//! ledger ([`Create::Always`], `--create-ledger`).

mod older;
mod spans;
pub mod state;

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use uuid::Uuid;

pub use state::{Outcome, Refusal, State};

/// The ledger file and its lock.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    tmp: PathBuf,
    dir: PathBuf,
    lock: File,
    /// The id and newest generation this handle has seen.
    seen: Mutex<(Uuid, u64)>,
}

/// When `open` may create a missing ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// Only when nothing shows that a ledger existed at the path.
    IfNew,
    /// Whenever the file is missing: the operator asked for a new ledger.
    Always,
}

/// What can go wrong with the ledger.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file exists but is not a valid ledger. Fatal: never overwritten.
    #[error("ledger {path} is corrupt: {problem}; refusing to start from it or overwrite it")]
    Corrupt { path: PathBuf, problem: String },
    /// The file is missing, but its lock or temp file shows it existed. Fatal.
    #[error(
        "ledger {path} is missing, but {evidence} shows a ledger existed there: refusing to start again from 0. \
         Restore the file (or fix SUM_FILE / the volume), or start with --create-ledger to begin a new ledger at 0"
    )]
    Missing { path: PathBuf, evidence: PathBuf },
    /// The file vanished or was replaced while the totaler ran. Fatal.
    #[error("ledger {path} {what} while the totaler was running; not acking anything past it")]
    Replaced { path: PathBuf, what: String },
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
    /// Opens the ledger at `path`, creating the directory and, when missing
    /// and `create` allows it, a new ledger holding a zero total. A version 1
    /// ledger is converted. Fails on a corrupt file.
    pub fn open(path: &Path, create: Create) -> Result<(Self, State), Error> {
        let dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&dir).map_err(io_error(&dir, "creating the directory"))?;
        // Opening is serialised on the directory: a totaler creating the
        // ledger makes the lock file before sum.txt, and another starting
        // meanwhile must not take that lock file for a vanished ledger's.
        let opening = File::open(&dir).map_err(io_error(&dir, "opening the directory"))?;
        opening
            .lock()
            .map_err(io_error(&dir, "locking the directory"))?;
        let lock_path = with_suffix(path, ".lock");
        let tmp = with_suffix(path, ".tmp");
        if create == Create::IfNew
            && !path.exists()
            && let Some(evidence) = [&lock_path, &tmp].into_iter().find(|p| p.exists())
        {
            return Err(Error::Missing {
                path: path.to_path_buf(),
                evidence: evidence.clone(),
            });
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error(&lock_path, "opening the lock file"))?;
        let ledger = Self {
            path: path.to_path_buf(),
            tmp,
            dir,
            lock,
            seen: Mutex::new((Uuid::nil(), 0)),
        };
        let update = ledger.update(|_| ())?;
        drop(opening);
        Ok((ledger, update.state))
    }

    /// Reads the file without the lock (renames are atomic, so this sees
    /// one complete version) and checks it is the ledger this handle knows.
    pub fn read(&self) -> Result<State, Error> {
        let state = self.read_file()?;
        self.check_seen(state.as_ref())?;
        state.ok_or_else(|| self.replaced("disappeared"))
    }

    /// The file's state, `None` if it does not exist.
    fn read_file(&self) -> Result<Option<State>, Error> {
        match fs::read_to_string(&self.path) {
            Ok(text) => State::parse(&text)
                .map(Some)
                .map_err(|problem| self.corrupt(problem)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
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
        let found = self.read_file()?;
        self.check_seen(found.as_ref())?;
        let mut state = found.clone().unwrap_or_default();
        if state.id.is_nil() {
            // New, version 1 or a bare total: this ledger gets its identity.
            state.id = Uuid::new_v4();
        }
        let before = state.clone();
        let result = change(&mut state);
        if state != before || found.as_ref() != Some(&state) {
            state.generation += 1;
            self.write(&state)?;
        }
        self.see(&state);
        Ok((state, result))
    }

    /// Fails if `found` is not the ledger this handle has seen: gone, another
    /// ledger, or an older copy.
    fn check_seen(&self, found: Option<&State>) -> Result<(), Error> {
        let (id, generation) = *self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if id.is_nil() {
            return Ok(());
        }
        match found {
            None => Err(self.replaced("disappeared")),
            Some(state) if state.id != id => Err(self.replaced(&format!(
                "was replaced by another ledger (id {}, expected {id})",
                state.id
            ))),
            Some(state) if state.generation < generation => Err(self.replaced(&format!(
                "was replaced by an older copy (generation {}, last seen {generation})",
                state.generation
            ))),
            Some(state) => {
                self.see(state);
                Ok(())
            }
        }
    }

    fn see(&self, state: &State) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.0 != state.id || seen.1 < state.generation {
            *seen = (state.id, state.generation);
        }
    }

    fn replaced(&self, what: &str) -> Error {
        Error::Replaced {
            path: self.path.clone(),
            what: what.to_owned(),
        }
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
    /// Whether the totaler must stop (anything but a disk error).
    pub fn is_fatal(&self) -> bool {
        !matches!(self, Error::Io { .. })
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
    use proto::message::Part;
    use uuid::Uuid;

    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tally-ledger-{name}-{}", Uuid::new_v4()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn one(batch: i64) -> Part {
        Part {
            batch,
            part: 0,
            parts: 1,
        }
    }

    #[test]
    fn missing_file_starts_at_zero_and_is_created_with_its_directory() {
        let path = temp_dir("missing").join("nested/sum.txt");
        let (_ledger, state) = Ledger::open(&path, Create::IfNew).unwrap();
        assert_eq!(state.total, 0);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("0\ntally-ledger v3 {} 1\n", state.id));
        assert!(!state.id.is_nil());
    }

    #[test]
    fn a_missing_file_with_its_lock_beside_it_is_refused_unless_asked_for() {
        let path = temp_dir("evidence").join("sum.txt");
        let (ledger, _) = Ledger::open(&path, Create::IfNew).unwrap();
        ledger
            .update(|state| state.apply_part(Uuid::from_u128(1), one(1), 42))
            .unwrap();
        drop(ledger);
        fs::remove_file(&path).unwrap();
        let error = Ledger::open(&path, Create::IfNew).unwrap_err();
        assert!(error.is_fatal());
        let message = error.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("--create-ledger"), "{message}");
        assert!(!path.exists(), "nothing is created");
        let (_, state) = Ledger::open(&path, Create::Always).unwrap();
        assert_eq!(state.total, 0, "a new ledger, as the operator asked");
    }

    #[test]
    fn a_totaler_opening_while_another_creates_the_ledger_waits_for_it() {
        // Another totaler is creating the ledger: it holds the directory
        // and has made the lock file, not yet sum.txt.
        let dir = temp_dir("creating");
        let path = dir.join("sum.txt");
        let creator = File::open(&dir).unwrap();
        creator.lock().unwrap();
        fs::write(with_suffix(&path, ".lock"), "").unwrap();
        let opening = std::thread::spawn({
            let path = path.clone();
            move || Ledger::open(&path, Create::IfNew).map(|(_, state)| state)
        });
        std::thread::sleep(Duration::from_millis(300));
        let made = temp_dir("made").join("sum.txt");
        let (_, state) = Ledger::open(&made, Create::IfNew).unwrap();
        fs::copy(&made, &path).unwrap();
        creator.unlock().unwrap();
        let opened = opening
            .join()
            .unwrap()
            .expect("it waited and found the new ledger");
        assert_eq!(opened.id, state.id);
    }

    #[test]
    fn a_ledger_deleted_under_a_running_handle_is_fatal_and_not_recreated() {
        let path = temp_dir("vanish").join("sum.txt");
        let (ledger, _) = Ledger::open(&path, Create::IfNew).unwrap();
        let source = Uuid::from_u128(1);
        ledger
            .update(|state| state.apply_part(source, one(1), 42))
            .unwrap();
        fs::remove_file(&path).unwrap();
        let error = ledger
            .update(|state| state.apply_part(source, one(2), 1))
            .unwrap_err();
        assert!(error.is_fatal(), "{error}");
        assert!(error.to_string().contains("disappeared"), "{error}");
        assert!(!path.exists(), "not started again from 0");
        assert!(ledger.read().is_err());
    }

    #[test]
    fn a_ledger_replaced_by_an_older_copy_or_another_ledger_is_fatal() {
        let dir = temp_dir("replace");
        let path = dir.join("sum.txt");
        let (ledger, _) = Ledger::open(&path, Create::IfNew).unwrap();
        let source = Uuid::from_u128(1);
        ledger
            .update(|state| state.apply_part(source, one(1), 42))
            .unwrap();
        let older = fs::read_to_string(&path).unwrap();
        ledger
            .update(|state| state.apply_part(source, one(2), 1))
            .unwrap();
        fs::write(&path, &older).unwrap();
        let error = ledger
            .update(|state| state.apply_part(source, one(3), 1))
            .unwrap_err();
        assert!(error.to_string().contains("older copy"), "{error}");
        assert_eq!(fs::read_to_string(&path).unwrap(), older, "left as found");
        let other = dir.join("other.txt");
        Ledger::open(&other, Create::IfNew).unwrap();
        fs::copy(&other, &path).unwrap();
        let error = ledger.read().unwrap_err();
        assert!(error.to_string().contains("another ledger"), "{error}");
    }

    #[test]
    fn a_version_1_ledger_is_converted_keeping_total_and_rows() {
        let path = temp_dir("v1").join("sum.txt");
        let source = Uuid::from_u128(5);
        fs::write(
            &path,
            format!("99\ntally-ledger v1\nsource {source} 3 7-7\n"),
        )
        .unwrap();
        let (ledger, state) = Ledger::open(&path, Create::IfNew).unwrap();
        assert_eq!(state.total, 99);
        assert!(
            fs::read_to_string(&path)
                .unwrap()
                .contains("tally-ledger v3")
        );
        let update = ledger
            .update(|state| state.apply_row(source, 7, 5))
            .unwrap();
        assert_eq!(update.result, Outcome::Duplicate);
        assert_eq!(
            ledger
                .update(|state| state.apply_row(source, 4, 5))
                .unwrap()
                .state
                .total,
            104
        );
    }

    /// Issue 21, item 3: the file grows with the gaps, not the batches.
    #[test]
    fn a_source_far_past_a_gap_keeps_a_file_of_a_few_lines() {
        let path = temp_dir("far").join("sum.txt");
        let (ledger, _) = Ledger::open(&path, Create::IfNew).unwrap();
        let source = Uuid::from_u128(4);
        let update = ledger
            .update(|state| {
                (2..=120_001).all(|batch| state.apply_part(source, one(batch), 1).is_ok())
            })
            .unwrap();
        assert!(update.result, "every batch past the gap of batch 1 applied");
        ledger
            .update(|state| state.apply_part(source, one(1_000_000_000), 1))
            .unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(
            text.lines().nth(2),
            Some(format!("source {source} 2-120001,1000000000-1000000000").as_str())
        );
        assert!(text.len() < 200, "{} bytes", text.len());
        assert_eq!(ledger.read().unwrap().total, 120_001);
    }

    #[test]
    fn a_version_2_ledger_is_read_and_written_as_version_3_at_the_next_change() {
        let path = temp_dir("v2").join("sum.txt");
        let (id, source) = (Uuid::from_u128(8), Uuid::from_u128(5));
        let v2 = format!("10\ntally-ledger v2 {id} 3\nsource {source} 4 6/1:0-0\n");
        fs::write(&path, &v2).unwrap();
        let (ledger, state) = Ledger::open(&path, Create::IfNew).unwrap();
        assert_eq!((state.id, state.total), (id, 10));
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            v2,
            "untouched until a change"
        );
        ledger
            .update(|state| state.apply_part(source, one(5), 1))
            .unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("11\ntally-ledger v3 {id} 4\nsource {source} 1-6\n")
        );
    }

    #[test]
    fn corrupt_file_is_refused_and_left_as_it_was() {
        let path = temp_dir("corrupt").join("sum.txt");
        fs::write(&path, "12abc\n").unwrap();
        let error = Ledger::open(&path, Create::IfNew).unwrap_err();
        assert!(error.is_fatal());
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
        let (first, _) = Ledger::open(&path, Create::IfNew).unwrap();
        let (second, _) = Ledger::open(&path, Create::IfNew).unwrap();
        let source = Uuid::from_u128(9);
        first
            .update(|state| state.apply_part(source, one(1), 5))
            .unwrap();
        let update = second
            .update(|state| state.apply_part(source, one(1), 5))
            .unwrap();
        assert_eq!(update.result, Ok(Outcome::Duplicate));
        assert_eq!(update.state.total, 5);
        assert_eq!(second.read().unwrap().total, 5);
    }

    #[test]
    fn concurrent_updates_from_threads_with_own_handles_are_exact() {
        let path = temp_dir("threads").join("sum.txt");
        Ledger::open(&path, Create::IfNew).unwrap();
        let source = Uuid::from_u128(3);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let (ledger, _) = Ledger::open(&path, Create::IfNew).unwrap();
                    for i in 0..50 {
                        let part = Part {
                            batch: i + 1,
                            part: t,
                            parts: 4,
                        };
                        ledger
                            .update(|state| state.apply_part(source, part, 1))
                            .unwrap()
                            .result
                            .unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let state = Ledger::open(&path, Create::IfNew).unwrap().1;
        assert_eq!(state.total, 200);
        assert_eq!(state.batches(source).applied, [(1, 50)]);
    }
}
