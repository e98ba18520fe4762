//! Faults of the file under the total: the tmpfs under `sum.txt` filled up
//! while Adds flow (then the totaler SIGTERMed or SIGKILLed, restarted, the
//! space freed), `sum.txt` deleted, and `sum.txt` replaced by an older copy
//! of itself. The totaler must never ack what it did not write, and must
//! stop or refuse rather than start again from 0 or build on an old copy;
//! the suite then puts the right file back and the total must be exact.

use std::{fs, time::Duration};

use crate::{
    metrics::{LEDGER_ERRORS, scrape, value},
    stack::Stack,
};

/// How long a totaler may take to notice a vanished or replaced `sum.txt`.
const NOTICE: Duration = Duration::from_secs(5);

impl Stack {
    pub(crate) async fn full_disk(&mut self, kill: bool) -> anyhow::Result<()> {
        if !self.data.is_tmpfs() {
            return Ok(()); // Reported once at start: not root, no tmpfs.
        }
        let before = value(&scrape(self.totaler.http).await, LEDGER_ERRORS);
        let filler = self.data.fill()?;
        if self
            .ledger_errors_above(before, Duration::from_secs(15))
            .await
        {
            self.counts.full_disk_ledger_errors += 1;
        } else {
            self.fail(format!(
                "the totaler reported no ledger error within 15 s of the disk under {} filling up",
                self.data.sum_file().display()
            ));
        }
        self.sampler.sample_now().await;
        if kill {
            self.totaler.kill();
            self.counts.full_disk_kills += 1;
        } else {
            // It cannot finish its batch: it must still exit within its grace.
            match self.totaler.terminate().await {
                Ok(status) => self.counts.full_disk_sigterm_exits.push(status.to_string()),
                Err(e) => self.fail(format!("SIGTERM on a full disk: {e:#}")),
            }
            self.counts.full_disk_sigterms += 1;
        }
        let restarted = self.totaler.start().await;
        self.pause(500, 1500).await;
        filler.free()?;
        restarted?;
        if !Self::ready(self.totaler.http, Duration::from_secs(30)).await {
            self.fail("the totaler was not ready 30 s after the disk was freed".to_owned());
        }
        Ok(())
    }

    async fn ledger_errors_above(&self, before: f64, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if value(&scrape(self.totaler.http).await, LEDGER_ERRORS) > before {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Deletes `sum.txt` (under its lock, keeping the inode aside) while the
    /// totaler runs. The totaler must exit non-zero; a start with the file
    /// missing and its lock present must be refused; neither may recreate it.
    pub(crate) async fn delete_sum_file(&mut self) -> anyhow::Result<()> {
        let kept = self.data.dir.join("faults-kept-sum.txt");
        self.data.take_away(&kept)?;
        self.counts.sum_file_deletions += 1;
        self.expect_stop("deleted").await?;
        self.expect_no_new_ledger("deleted", "while it ran");
        match self.totaler.start().await {
            Err(_) => self.counts.refused_starts += 1,
            Ok(()) => {
                self.totaler.kill();
                self.fail(
                    "the totaler started on a missing sum.txt whose sum.txt.lock exists (without --create-ledger it must refuse)"
                        .to_owned(),
                );
            }
        }
        self.expect_no_new_ledger("deleted", "at a start");
        self.data
            .put_back(&kept, &self.data.dir.join("faults-recreated-sum.txt"))?;
        self.totaler.start().await
    }

    /// Replaces `sum.txt` by a copy of itself taken a moment earlier. The
    /// totaler must exit non-zero rather than build on the older copy.
    pub(crate) async fn replace_sum_file(&mut self) -> anyhow::Result<()> {
        let older = self.data.snapshot()?;
        self.pause(1000, 2000).await;
        // The copy is older only once the totaler wrote since (after a broker
        // fault it may not have): wait for that, or the "replacement" is the
        // current file and building on it is right.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while fs::read_to_string(self.data.sum_file()).unwrap_or_default() == older {
            if std::time::Instant::now() > deadline {
                self.fail(
                    "sum.txt did not change for 20 s, so no older copy could be made".to_owned(),
                );
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let kept = self.data.dir.join("faults-kept-sum.txt");
        self.data.replace(&older, &kept)?;
        self.counts.sum_file_replacements += 1;
        self.expect_stop("replaced by an older copy").await?;
        let now = fs::read_to_string(self.data.sum_file()).unwrap_or_default();
        if now != older {
            self.fail(format!(
                "the totaler wrote over an older copy of sum.txt: its total went from {} to {}",
                first_line(&older),
                first_line(&now)
            ));
        }
        self.data
            .put_back(&kept, &self.data.dir.join("faults-overwritten-sum.txt"))?;
        self.totaler.start().await
    }

    /// The totaler must exit non-zero within `NOTICE`; it is killed otherwise.
    async fn expect_stop(&mut self, what: &str) -> anyhow::Result<()> {
        match self.totaler.wait_exit(NOTICE).await? {
            Some(status) if !status.success() => self.counts.sum_file_stops += 1,
            Some(status) => self.fail(format!(
                "the totaler exited with {status} (success) after sum.txt was {what}"
            )),
            None => {
                self.sampler.sample_now().await;
                self.totaler.kill();
                self.fail(format!(
                    "the totaler kept running for {NOTICE:?} after sum.txt was {what}"
                ));
            }
        }
        Ok(())
    }

    fn expect_no_new_ledger(&mut self, what: &str, when: &str) {
        let sum = self.data.sum_file();
        if let Ok(text) = fs::read_to_string(&sum) {
            let evidence = self.data.dir.join("faults-recreated-sum.txt");
            let _ = fs::rename(&sum, evidence);
            self.fail(format!(
                "the totaler created a new sum.txt {when} after it was {what}: it started again from 0 (total {})",
                first_line(&text)
            ));
        }
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}
