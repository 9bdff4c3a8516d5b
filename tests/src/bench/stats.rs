//! Latency summaries and CPU accounting from `/proc`.

use std::fmt;
use std::time::Duration;

/// Linux reports CPU time in `/proc` in USER_HZ ticks, 100 per second on every architecture
/// the agent ships for.
const TICKS_PER_SECOND: u64 = 100;

/// The `p`-quantile (0.0–1.0) of sorted samples, by nearest rank; zero when there are none.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Milliseconds, with their fraction.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// How many samples, their p50, p99 and max.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latency {
    /// Samples.
    pub count: usize,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest sample.
    pub max: Duration,
}

impl Latency {
    /// The summary of `samples` (in any order).
    pub fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        Self {
            count: samples.len(),
            p50: percentile(&samples, 0.5),
            p99: percentile(&samples, 0.99),
            max: samples.last().copied().unwrap_or_default(),
        }
    }
}

/// `p50 / p99` in milliseconds (3 significant digits, at most 2 decimals), or `–`
/// without samples.
impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.count == 0 {
            return f.write_str("–");
        }
        let show = |d: Duration| {
            let ms = ms(d);
            let decimals = if ms >= 100.0 {
                0
            } else if ms >= 10.0 {
                1
            } else {
                2
            };
            format!("{ms:.decimals$}")
        };
        write!(f, "{} / {}", show(self.p50), show(self.p99))
    }
}

/// The whole machine's CPU counters from `/proc/stat` (every process: publishers, brokers,
/// servers, agents), to put a figure on what a path costs per message.
#[derive(Debug, Clone, Copy)]
pub struct MachineCpu {
    busy: u64,
    total: u64,
}

impl MachineCpu {
    /// The counters now.
    pub fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let ticks: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|t| t.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest is within user)
        let at = |i: usize| ticks.get(i).copied().unwrap_or(0);
        let idle = at(3) + at(4);
        let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
        Self {
            busy,
            total: busy + idle,
        }
    }

    /// What the machine spent since `self`, for `messages` messages.
    pub fn since(self, messages: u64) -> CpuUse {
        let end = Self::now();
        let busy = end.busy.saturating_sub(self.busy) as f64;
        let total = end.total.saturating_sub(self.total).max(1) as f64;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        CpuUse {
            micros_per_message: busy * (1e6 / TICKS_PER_SECOND as f64) / messages.max(1) as f64,
            busy_cores: busy / total * cores,
        }
    }
}

/// The machine's CPU over a timed window: µs of busy time per message, mean busy cores.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuUse {
    /// Busy CPU time of the whole machine per message, µs.
    pub micros_per_message: f64,
    /// The mean number of busy cores over the window.
    pub busy_cores: f64,
}

/// `µs/msg | busy cores`, two cells of a markdown row.
impl fmt::Display for CpuUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.0} | {:.2}", self.micros_per_message, self.busy_cores)
    }
}

/// The CPU time (user + system) a process has used so far, from `/proc/PID/stat`; `None`
/// once it is gone.
pub fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name (field 2) is in parentheses and may hold spaces: count after its end. Field 3
    // (state) is then the first, utime (14) the 12th and stime (15) the 13th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis(
        (utime + stime) * 1000 / TICKS_PER_SECOND,
    ))
}
