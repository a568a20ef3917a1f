//! Process metrics computed at scrape time: uptime, start time, and on Linux
//! resident memory, CPU time, threads and open file descriptors (the
//! `process_*` set Prometheus client libraries conventionally export).

use std::fmt;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// Reports `trellis_uptime_seconds`, `trellis_start_time_seconds` and the
/// `trellis_process_*` metrics.
#[derive(Debug)]
pub struct ProcessCollector {
    started: Instant,
    start_unix: f64,
}

impl Default for ProcessCollector {
    fn default() -> Self {
        ProcessCollector::new()
    }
}

impl ProcessCollector {
    /// Measures uptime from now.
    pub fn new() -> Self {
        let start_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        ProcessCollector {
            started: Instant::now(),
            start_unix,
        }
    }

    /// Seconds since the collector was created.
    pub fn uptime_seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

fn gauge<N>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: N,
) -> fmt::Result
where
    ConstGauge<N>: EncodeMetric,
{
    let metric = ConstGauge::new(value);
    let e = encoder.encode_descriptor(name, help, unit, metric.metric_type())?;
    metric.encode(e)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        gauge(
            &mut encoder,
            "uptime",
            "Time since the process started",
            Some(&Unit::Seconds),
            self.uptime_seconds(),
        )?;
        gauge(
            &mut encoder,
            "start_time",
            "Start time of the process since the Unix epoch",
            Some(&Unit::Seconds),
            self.start_unix,
        )?;
        if let Some(stats) = linux::read() {
            gauge(
                &mut encoder,
                "process_resident_memory",
                "Resident memory size",
                Some(&Unit::Bytes),
                stats.resident_bytes,
            )?;
            gauge(
                &mut encoder,
                "process_threads",
                "OS threads in the process",
                None,
                stats.threads,
            )?;
            gauge(
                &mut encoder,
                "process_open_fds",
                "Open file descriptors",
                None,
                stats.open_fds,
            )?;
            let cpu = ConstCounter::new(stats.cpu_seconds);
            let e = encoder.encode_descriptor(
                "process_cpu",
                "User and system CPU time spent",
                Some(&Unit::Seconds),
                cpu.metric_type(),
            )?;
            cpu.encode(e)?;
        }
        Ok(())
    }
}

mod linux {
    pub(super) struct Stats {
        pub resident_bytes: f64,
        pub threads: i64,
        pub open_fds: i64,
        pub cpu_seconds: f64,
    }

    /// Kernel clock ticks per second for /proc CPU times; 100 on every
    /// mainstream Linux configuration.
    const TICKS_PER_SECOND: f64 = 100.0;

    pub(super) fn read() -> Option<Stats> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let field = |name: &str| -> Option<f64> {
            let line = status.lines().find(|l| l.starts_with(name))?;
            line.split_whitespace().nth(1)?.parse().ok()
        };
        let resident_bytes = field("VmRSS:")? * 1024.0;
        let threads = field("Threads:")? as i64;
        let open_fds = i64::try_from(std::fs::read_dir("/proc/self/fd").ok()?.count()).ok()?;
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the parenthesised command name, which may hold spaces.
        let after = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        Some(Stats {
            resident_bytes,
            threads,
            open_fds,
            cpu_seconds: (utime + stime) / TICKS_PER_SECOND,
        })
    }
}
