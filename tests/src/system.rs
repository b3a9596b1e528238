//! What a test can see of the machine after a server stopped: the mounts
//! and processes it may have left behind; and, while it runs, its memory.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

/// The mount points at or below `dir`, from `/proc/self/mountinfo`.
pub fn mounts_under(dir: &Path) -> Result<Vec<String>> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .context("Failed to read /proc/self/mountinfo")?;
    Ok(mountinfo
        .lines()
        // The fifth field is the mount point (spaces escaped as \040).
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| Path::new(point).starts_with(dir))
        .map(str::to_string)
        .collect())
}

/// The FUSE connections (`/sys/fs/fuse/connections/<id>`) of the FUSE
/// mounts at or below `dir`.
pub fn fuse_connections_under(dir: &Path) -> Result<Vec<u32>> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .context("Failed to read /proc/self/mountinfo")?;
    Ok(mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let fstype = line.split(" - ").nth(1)?.split(' ').next()?;
            let under = Path::new(fields.get(4)?).starts_with(dir);
            // FUSE devices are anonymous (major 0); the minor is the id.
            let (_, minor) = fields.get(2)?.split_once(':')?;
            (under && fstype.starts_with("fuse")).then(|| minor.parse().ok())?
        })
        .collect())
}

/// Aborts FUSE connection `id`: every request waiting on it fails, so a
/// dead or stuck server's mount can be detached and its threads can exit.
pub fn abort_fuse_connection(id: u32) -> Result<()> {
    let path = format!("/sys/fs/fuse/connections/{id}/abort");
    fs::write(&path, "1").with_context(|| format!("Failed to write {path}"))
}

/// Processes (other than this one) whose command line contains `needle`,
/// as (pid, command line with spaces between the arguments).
pub fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let own = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            // Processes come and go while we look: a vanished one is skipped.
            let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let line = String::from_utf8_lossy(&raw).replace('\0', " ");
            (pid != own && line.contains(needle)).then(|| (pid, line.trim().to_string()))
        })
        .collect()
}

/// The peak resident set size of process `pid` (`VmHWM` in
/// `/proc/PID/status`), in bytes.
pub fn peak_rss_bytes(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("Failed to read {path}"))?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .and_then(|value| value.trim().parse::<u64>().ok())
        .with_context(|| format!("{path} has no VmHWM line"))?;
    Ok(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_the_root_mount_and_this_process_is_excluded() -> Result<()> {
        assert!(
            mounts_under(Path::new("/"))?
                .iter()
                .any(|point| point == "/")
        );
        assert!(mounts_under(Path::new("/nonexistent-lazybarn"))?.is_empty());
        assert!(fuse_connections_under(Path::new("/nonexistent-lazybarn"))?.is_empty());
        let marker = format!("lazybarn-marker-{}", std::process::id());
        assert!(processes_mentioning(&marker).is_empty());
        assert!(peak_rss_bytes(std::process::id())? > 0);
        Ok(())
    }
}
