//! Where a run keeps its servers, files and logs, and what becomes of them:
//! `target/faults/<mode>-<seed>-<pid>/` while it runs; removed when the run
//! passed; moved to `target/faults-failed/<mode>-<seed>-<time>/` when it
//! failed, returned an error or was abandoned (a test's timeout drops it),
//! where no later run deletes it, and the seed and the path are printed.
//! [`Finished`] carries both to the caller's verdict. A run whose process
//! was killed could keep nothing: the next run moves its directory there
//! (`-abandoned`), after unmounting its tmpfs (`testkit::sentinel` has
//! stopped its processes).

use std::{
    fmt,
    path::{Path, PathBuf},
    process::Command,
};

/// A run's directory; kept (moved aside) unless [`RunDir::passed`] is called.
pub struct RunDir {
    path: PathBuf,
    mode: &'static str,
    seed: u64,
    settled: bool,
}

/// What any mode's report says in the end.
pub trait Verdict: fmt::Display {
    fn seed(&self) -> u64;
    /// Every problem found; empty when the run passed.
    fn problems(&self) -> Vec<String>;
}

/// A finished run: its report and, when it failed, where its directory is.
#[derive(Debug)]
pub struct Finished<R> {
    pub report: R,
    pub kept: Option<PathBuf>,
}

impl RunDir {
    /// Creates `target/faults/<mode>-<seed>-<pid>/`.
    pub fn create(mode: &'static str, seed: u64) -> std::io::Result<Self> {
        sweep_abandoned(&target_dir());
        let path = target_dir()
            .join("faults")
            .join(format!("{mode}-{seed}-{}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(Self {
            path,
            mode,
            seed,
            settled: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The run is over (everything it started stopped): removes the
    /// directory when `report` has no problems, else keeps it.
    pub fn finish<R: Verdict>(mut self, report: R) -> Finished<R> {
        self.settled = true;
        if report.problems().is_empty() {
            let _ = std::fs::remove_dir_all(&self.path);
            return Finished { report, kept: None };
        }
        let kept = self.keep();
        Finished {
            report,
            kept: Some(kept),
        }
    }

    /// The run ended in an error: keeps the directory and says so in the error.
    pub fn failed(mut self, error: anyhow::Error) -> anyhow::Error {
        self.settled = true;
        let kept = self.keep();
        error.context(format!(
            "faults {}: seed {} (replay with TALLY_FAULTS_SEED={}); logs in {}",
            self.mode,
            self.seed,
            self.seed,
            kept.display()
        ))
    }

    /// Moves the directory to `target/faults-failed/<mode>-<seed>-<time>/`
    /// (or leaves it where it is if that fails); where it is now.
    fn keep(&self) -> PathBuf {
        let failed = target_dir().join("faults-failed");
        let to = failed.join(format!("{}-{}-{}", self.mode, self.seed, now()));
        let moved =
            std::fs::create_dir_all(&failed).and_then(|()| std::fs::rename(&self.path, &to));
        let kept = if moved.is_ok() { to } else { self.path.clone() };
        eprintln!(
            "faults {}: seed {} (replay with TALLY_FAULTS_SEED={}) failed; its servers' data and logs are in {}",
            self.mode,
            self.seed,
            self.seed,
            kept.display()
        );
        kept
    }
}

impl Drop for RunDir {
    /// Abandoned (a panic, a timeout): keep it.
    fn drop(&mut self) {
        if !self.settled {
            self.keep();
        }
    }
}

impl<R: Verdict> Finished<R> {
    /// `None` when the run passed; else the seed, where the logs are, and
    /// every problem: what a failing test prints.
    pub fn failure(&self) -> Option<String> {
        let problems = self.report.problems();
        if problems.is_empty() {
            return None;
        }
        let kept = self
            .kept
            .as_ref()
            .map_or_else(String::new, |p| format!("; logs in {}", p.display()));
        Some(format!(
            "seed {} (replay with TALLY_FAULTS_SEED={}){kept}: {} problems:\n  - {}",
            self.report.seed(),
            self.report.seed(),
            problems.len(),
            problems.join("\n  - ")
        ))
    }
}

/// Moves the directories of runs whose process is gone (`<…>-<pid>`) from
/// `target/faults/` to `target/faults-failed/<name>-abandoned`, unmounting
/// the tmpfs under each first.
fn sweep_abandoned(target: &Path) {
    let Ok(entries) = std::fs::read_dir(target.join("faults")) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name.rsplit('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_none_or(|pid| Path::new(&format!("/proc/{pid}")).exists()) {
            continue;
        }
        let _ = Command::new("umount")
            .arg(entry.path().join("data"))
            .stderr(std::process::Stdio::null())
            .status();
        let failed = target.join("faults-failed");
        let to = failed.join(format!("{name}-abandoned"));
        if std::fs::create_dir_all(&failed)
            .and_then(|()| std::fs::rename(entry.path(), &to))
            .is_ok()
        {
            eprintln!(
                "faults: the directory of a killed run is now {}",
                to.display()
            );
        }
    }
}

/// Cargo's target directory: the ancestor of this executable that holds
/// `CACHEDIR.TAG`; the temporary directory when there is none.
pub fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.ancestors()
                .find(|dir| dir.join("CACHEDIR.TAG").is_file())
                .map(Path::to_path_buf)
        })
        .unwrap_or_else(std::env::temp_dir)
}

/// The UTC time as `YYYYMMDD-HHMMSS`.
fn now() -> String {
    Command::new("date")
        .args(["-u", "+%Y%m%d-%H%M%S"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown-time".to_owned())
}
