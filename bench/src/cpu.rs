//! Who used the CPU during a window: user + system time of every process,
//! from `/proc/<pid>/stat`, summed by part (adder, totaler, PostgreSQL,
//! RabbitMQ, the harness itself, anything else), as cores busy on average.
//! On a 2-core machine this is what bounds a throughput: the parts' shares
//! add up to at most 2.

use std::{collections::BTreeMap, time::Instant};

use crate::figure::Figure;

/// The parts CPU time is summed by, in table order.
pub const PARTS: &[(&str, &str)] = &[
    ("adder", "adder"),
    ("totaler", "totaler"),
    ("postgres", "postgres"),
    ("rabbitmq", "beam.smp"),
    ("bench", "bench"),
    ("haproxy", "haproxy"),
];

/// The figures of each part's share, at saturation and at the fixed rate.
pub const FIGURES: &[(&str, Figure, Figure)] = &[
    (
        "adder",
        Figure::CpuSaturationAdder,
        Figure::CpuFixedRateAdder,
    ),
    (
        "totaler",
        Figure::CpuSaturationTotaler,
        Figure::CpuFixedRateTotaler,
    ),
    (
        "postgres",
        Figure::CpuSaturationPostgres,
        Figure::CpuFixedRatePostgres,
    ),
    (
        "rabbitmq",
        Figure::CpuSaturationRabbitmq,
        Figure::CpuFixedRateRabbitmq,
    ),
    (
        "bench",
        Figure::CpuSaturationBench,
        Figure::CpuFixedRateBench,
    ),
    (
        "other",
        Figure::CpuSaturationOther,
        Figure::CpuFixedRateOther,
    ),
];

/// `cores_since` as the figures of the saturation (`fixed_rate` false) or
/// the fixed-rate window.
pub fn figures(cores: &[(&'static str, f64)], fixed_rate: bool) -> Vec<(Figure, f64)> {
    cores
        .iter()
        .filter_map(|(part, value)| {
            let (_, saturation, rate) = FIGURES.iter().find(|(p, _, _)| p == part)?;
            Some((if fixed_rate { *rate } else { *saturation }, *value))
        })
        .collect()
}

/// CPU time used so far by every process, by part.
#[derive(Debug, Clone)]
pub struct Sample {
    at: Instant,
    ticks: BTreeMap<&'static str, u64>,
}

impl Sample {
    pub fn take() -> Self {
        let mut ticks: BTreeMap<&'static str, u64> = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(pid) = name
                    .to_str()
                    .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
                else {
                    continue;
                };
                if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    && let Some((comm, used)) = parse_stat(&stat)
                {
                    *ticks.entry(part_of(comm)).or_default() += used;
                }
            }
        }
        Self {
            at: Instant::now(),
            ticks,
        }
    }

    /// Cores each part kept busy on average between `before` and `self`.
    /// Processes that ended in between are not counted.
    pub fn cores_since(&self, before: &Sample) -> Vec<(&'static str, f64)> {
        let seconds = self.at.duration_since(before.at).as_secs_f64();
        let hz = clock_ticks_per_second();
        if seconds <= 0.0 {
            return Vec::new();
        }
        let mut parts: Vec<&'static str> = PARTS.iter().map(|(part, _)| *part).collect();
        parts.push("other");
        parts
            .into_iter()
            .map(|part| {
                let now = self.ticks.get(part).copied().unwrap_or(0);
                let was = before.ticks.get(part).copied().unwrap_or(0);
                (part, now.saturating_sub(was) as f64 / hz / seconds)
            })
            .collect()
    }
}

fn part_of(comm: &str) -> &'static str {
    PARTS
        .iter()
        .find(|(_, name)| comm == *name)
        .map_or("other", |(part, _)| part)
}

/// `(comm, utime + stime)` of a `/proc/<pid>/stat` line; the command name is
/// in parentheses and may itself contain spaces or parentheses.
fn parse_stat(stat: &str) -> Option<(&str, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = &stat[open + 1..close];
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // After the command: state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// Linux reports CPU time in ticks of `USER_HZ`, 100 on every architecture
/// Linux supports today.
fn clock_ticks_per_second() -> f64 {
    100.0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_give_command_and_cpu_ticks() {
        let line =
            "1234 (beam.smp) S 1 1234 1234 0 -1 4194560 2817 0 0 0 150 25 0 0 20 0 30 0 1000 0 0";
        assert_eq!(parse_stat(line), Some(("beam.smp", 175)));
        let odd = "7 (a (b) c) R 1 7 7 0 -1 0 0 0 0 0 3 4 0 0";
        assert_eq!(parse_stat(odd), Some(("a (b) c", 7)));
    }

    #[test]
    fn a_sample_sees_this_process_working() {
        let before = Sample::take();
        let started = Instant::now();
        let mut x = 0u64;
        while started.elapsed().as_millis() < 300 {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let after = Sample::take();
        let total: f64 = after.cores_since(&before).iter().map(|(_, c)| c).sum();
        assert!(total > 0.3, "a busy loop of 300 ms used {total} cores");
    }
}
