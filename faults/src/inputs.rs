//! Faults that come in through the inputs: NUL request ids beside good
//! Adds, forged and oversized messages published straight to the queue,
//! half-sent HTTP requests to the totaler, a slow outbox transaction whose
//! rows interleave with more than 1,024 published ones, and totals driven
//! beyond i64 in both directions and read back through `GET /sum`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::tally::v1::AddRequest;

use crate::{
    hostile,
    load::{client, until_acknowledged},
    outbox::{self, SLOW_BASE},
    process::http_get,
    readings::exact_sum,
    stack::Stack,
};

/// How far past i64 the total is driven (so the load's own Adds cannot
/// bring it back inside while GET /sum is polled).
const MARGIN: i128 = 1 << 40;

impl Stack {
    pub(crate) async fn nul_request_ids(&mut self) -> anyhow::Result<()> {
        if !Self::ready(self.adder.http, Duration::from_secs(30)).await {
            self.fail("the adder was not ready for the NUL request ids".to_owned());
        }
        self.counts.nul_rounds += 1;
        let label = format!("{}-nul-{}", self.options.seed, self.counts.nul_rounds);
        let grpc = self.adder_grpc();
        for problem in hostile::nul_request_ids(&grpc, &label, self.tally.clone()).await? {
            self.fail(problem);
        }
        Ok(())
    }

    /// Publishes forged and oversized messages straight to the queue; the
    /// final check expects exactly these in the dead-letter queue.
    pub(crate) async fn hostile_messages(&mut self) -> anyhow::Result<()> {
        let (source, top) = outbox::source_and_top(&self.postgres.url()).await?;
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        let bodies = hostile::hostile_bodies(&source, top, now_us);
        let raw: Vec<Vec<u8>> = bodies.iter().map(|(_, body)| body.clone()).collect();
        hostile::publish(&self.rabbit.url(), "tally.sums", &raw).await?;
        self.counts.hostile_messages += bodies.len() as u32;
        self.expected_dead.extend(bodies);
        Ok(())
    }

    pub(crate) async fn half_sent_http(&mut self) -> anyhow::Result<()> {
        let timeout = Duration::from_secs(self.options.header_timeout_seconds);
        self.counts.half_sent_rounds += 1;
        for problem in hostile::half_sent_http(self.totaler.http, timeout).await {
            self.fail(problem);
        }
        Ok(())
    }

    /// Opens a transaction on the outbox that inserts rows one at a time,
    /// each in a gap of its own between rows that are committed, published
    /// and counted meanwhile (more than 1,100 gaps and 1,100 Adds), then
    /// commits: its rows are acknowledged only then, and must all count.
    pub(crate) async fn slow_outbox_transaction(&mut self) -> anyhow::Result<()> {
        let first_tag = SLOW_BASE + i64::from(self.counts.slow_transactions) * 1_000_000;
        self.counts.slow_transactions += 1;
        let slow = outbox::slow_transaction(&self.postgres.url(), first_tag, 1_100, 1_100).await?;
        self.counts.slow_rows += slow.rows.len();
        self.counts.slow_gaps += slow.gaps;
        self.counts.slow_others += slow.others;
        if slow.committed {
            for (_, sum) in &slow.rows {
                self.tally.acknowledge(*sum);
            }
        } else {
            self.tally
                .uncertain
                .lock()
                .expect("tally lock")
                .extend(slow.rows.iter().copied());
        }
        if slow.gaps <= 1_024 || slow.others <= 1_100 {
            self.fail(format!(
                "the slow transaction opened only {} gaps around {} other Adds (it needs more than 1,024 and 1,100 to test the ledger's bound)",
                slow.gaps, slow.others
            ));
        }
        Ok(())
    }

    /// Adds `(i64::MAX, 0)` until the acknowledged total is past i64::MAX,
    /// waits for GET /sum to show it, then `(i64::MIN, 0)` until it is below
    /// i64::MIN, and waits again.
    pub(crate) async fn beyond_i64(&mut self) -> anyhow::Result<()> {
        self.counts.beyond_i64_rounds += 1;
        let label = format!(
            "{}-i64-{}",
            self.options.seed, self.counts.beyond_i64_rounds
        );
        let mut client = client(&self.adder_grpc())?;
        let mut n = 0;
        for (a, past) in [(i64::MAX, true), (i64::MIN, false)] {
            let beyond = |total: i128| {
                if past {
                    total > i128::from(i64::MAX) + MARGIN
                } else {
                    total < i128::from(i64::MIN) - MARGIN
                }
            };
            while !beyond(self.tally.sum()) {
                let request = AddRequest {
                    a,
                    b: 0,
                    request_id: format!("{label}-{n}"),
                };
                until_acknowledged(&mut client, &request, &self.tally).await;
                n += 1;
            }
            match self.served_until(beyond, Duration::from_secs(20)).await {
                Ok(served) => self.counts.beyond_i64_seen.push(served),
                Err(last) => self.fail(format!(
                    "GET /sum never showed the total beyond i64 ({}) within 20 s; last answer: {last}",
                    if past { "above i64::MAX" } else { "below i64::MIN" }
                )),
            }
        }
        Ok(())
    }

    /// Polls GET /sum until `done` holds for the exact total it serves.
    async fn served_until(
        &self,
        done: impl Fn(i128) -> bool,
        limit: Duration,
    ) -> Result<i128, String> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut last = String::from("no answer");
        while tokio::time::Instant::now() < deadline {
            match http_get(self.totaler.http, "/sum").await {
                Some((200, body)) => match exact_sum(&body) {
                    Some(total) if done(total) => return Ok(total),
                    _ => last = body,
                },
                Some((status, body)) => last = format!("{status} {body}"),
                None => last = "no answer (connection failed or closed)".to_owned(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(last)
    }
}
