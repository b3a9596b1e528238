//! Turning what the kernel and the clocks say about a finished command into
//! the protocol's `ResourceUsage`.

use std::time::{Duration, Instant, SystemTime};

use lazybarn_proto::runner::ResourceUsage;

/// When a command started, on both clocks: the wall clock for timestamps,
/// the monotonic one for its duration.
#[derive(Debug, Clone, Copy)]
pub struct StartTime {
    wall: SystemTime,
    monotonic: Instant,
}

impl StartTime {
    /// The current time.
    pub fn now() -> StartTime {
        StartTime {
            wall: SystemTime::now(),
            monotonic: Instant::now(),
        }
    }
}

/// Builds the `ResourceUsage` of a command that started at `start` and
/// whose process tree is now gone, from the `rusage` of its reaped init.
pub fn resource_usage(rusage: &libc::rusage, start: StartTime) -> ResourceUsage {
    let wall_time = start.monotonic.elapsed();
    ResourceUsage {
        user_time: Some(proto_duration(timeval(rusage.ru_utime))),
        system_time: Some(proto_duration(timeval(rusage.ru_stime))),
        // Linux reports kibibytes.
        max_resident_set_size_bytes: rusage.ru_maxrss.saturating_mul(1024),
        minor_page_faults: rusage.ru_minflt,
        major_page_faults: rusage.ru_majflt,
        file_system_inputs: rusage.ru_inblock,
        file_system_outputs: rusage.ru_oublock,
        voluntary_context_switches: rusage.ru_nvcsw,
        involuntary_context_switches: rusage.ru_nivcsw,
        wall_time: Some(proto_duration(wall_time)),
        start_time: Some(start.wall.into()),
        end_time: Some((start.wall + wall_time).into()),
    }
}

fn timeval(tv: libc::timeval) -> Duration {
    let micros = u64::try_from(tv.tv_usec).unwrap_or(0);
    Duration::from_secs(u64::try_from(tv.tv_sec).unwrap_or(0)) + Duration::from_micros(micros)
}

fn proto_duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: duration.subsec_nanos() as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_units() {
        // SAFETY: rusage is plain old data.
        let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
        rusage.ru_utime = libc::timeval {
            tv_sec: 2,
            tv_usec: 500_000,
        };
        rusage.ru_maxrss = 2048;
        let usage = resource_usage(&rusage, StartTime::now());
        assert_eq!(
            usage.user_time,
            Some(prost_types::Duration {
                seconds: 2,
                nanos: 500_000_000
            })
        );
        assert_eq!(usage.max_resident_set_size_bytes, 2 * 1024 * 1024);
        let (start, end) = (usage.start_time.expect("set"), usage.end_time.expect("set"));
        assert!((end.seconds, end.nanos) >= (start.seconds, start.nanos));
    }
}
