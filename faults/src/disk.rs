//! The directory under `sum.txt`: a small tmpfs mounted there (so the disk
//! really fills up), a filler that keeps it full, and taking `sum.txt` away
//! or putting it back under the ledger's own lock (`sum.txt.lock`), exactly
//! as a totaler would see an operator or another program do it. The tmpfs
//! is unmounted when this is dropped, also when the run fails.

use std::{
    fs::{self, File},
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, bail};

use crate::process::run;

/// The sum file's directory, on its own tmpfs when the suite runs as root.
pub struct DataDir {
    pub dir: PathBuf,
    mounted: bool,
}

/// Keeps the tmpfs full until dropped, then frees the space.
pub struct Filler {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DataDir {
    /// Creates `dir` and mounts a tmpfs of `size` (e.g. `1m`) on it. Not
    /// root: no mount, and the reason as the error (the caller reports it).
    pub fn mount(dir: &Path, size: &str) -> (Self, Option<String>) {
        let _ = fs::create_dir_all(dir);
        let mut data = Self {
            dir: dir.to_path_buf(),
            mounted: false,
        };
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        if uid != "0" {
            let why = format!(
                "the full-disk faults need root to mount a tmpfs under sum.txt (`id -u` is {uid:?}); they did not run"
            );
            return (data, Some(why));
        }
        match run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir))
        {
            Ok(()) => {
                data.mounted = true;
                (data, None)
            }
            Err(e) => (
                data,
                Some(format!("mounting a tmpfs on {}: {e:#}", dir.display())),
            ),
        }
    }

    pub fn is_tmpfs(&self) -> bool {
        self.mounted
    }

    pub fn sum_file(&self) -> PathBuf {
        self.dir.join("sum.txt")
    }

    /// Fills the file system and keeps it full (a totaler's rename frees a
    /// block, the filler takes it back) until the `Filler` is dropped.
    pub fn fill(&self) -> anyhow::Result<Filler> {
        let path = self.dir.join("faults-filler");
        let mut file = File::create(&path).context("creating the filler")?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let chunk = vec![0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    while file.write_all(&chunk).is_ok() {}
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        Ok(Filler {
            path,
            stop,
            thread: Some(thread),
        })
    }

    /// Holds the ledger's lock (as every totaler update does) while `f` runs.
    pub fn under_lock<T>(&self, f: impl FnOnce(&Path) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("sum.txt.lock"))?;
        lock.lock().context("locking sum.txt.lock")?;
        let result = f(&self.sum_file());
        let _ = lock.unlock();
        result
    }

    /// Moves `sum.txt` to `keep` (a hard link, then unlink), under the lock.
    pub fn take_away(&self, keep: &Path) -> anyhow::Result<()> {
        self.under_lock(|sum| {
            let _ = fs::remove_file(keep);
            fs::hard_link(sum, keep).context("linking sum.txt aside")?;
            fs::remove_file(sum).context("deleting sum.txt")?;
            Ok(())
        })
    }

    /// Puts `from` back as `sum.txt`, moving whatever is there now to `evidence`.
    pub fn put_back(&self, from: &Path, evidence: &Path) -> anyhow::Result<()> {
        self.under_lock(|sum| {
            if sum.exists() {
                fs::rename(sum, evidence)?;
            }
            fs::rename(from, sum).context("putting sum.txt back")?;
            Ok(())
        })
    }

    /// Replaces `sum.txt` by `content` (atomically, a new file), keeping the
    /// current one as `keep`.
    pub fn replace(&self, content: &str, keep: &Path) -> anyhow::Result<()> {
        self.under_lock(|sum| {
            let _ = fs::remove_file(keep);
            fs::hard_link(sum, keep).context("linking sum.txt aside")?;
            let staged = self.dir.join("faults-older-copy");
            fs::write(&staged, content)?;
            fs::rename(&staged, sum).context("replacing sum.txt")?;
            Ok(())
        })
    }

    /// The content of `sum.txt` read under the lock.
    pub fn snapshot(&self) -> anyhow::Result<String> {
        self.under_lock(|sum| Ok(fs::read_to_string(sum)?))
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if self.mounted {
            let unmounted = Command::new("umount").arg(&self.dir).status();
            if !unmounted.is_ok_and(|s| s.success()) {
                // Something still holds a file there: detach it anyway.
                let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
            }
        }
    }
}

impl Filler {
    /// Stops filling and frees the space.
    pub fn free(mut self) -> anyhow::Result<()> {
        self.stop_thread();
        if let Err(e) = fs::remove_file(&self.path) {
            bail!("freeing the filler {}: {e}", self.path.display());
        }
        Ok(())
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Filler {
    fn drop(&mut self) {
        self.stop_thread();
        let _ = fs::remove_file(&self.path);
    }
}
