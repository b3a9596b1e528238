//! Linux-specific calls: lazy unmount, aborting a FUSE connection through
//! fusectl, reading /proc/self/mountinfo, statvfs.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where the kernel's FUSE control filesystem lives.
const FUSECTL: &str = "/sys/fs/fuse/connections";

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// `statvfs(2)`.
pub(crate) fn statvfs(path: &Path) -> io::Result<libc::statvfs> {
    let path = c_path(path)?;
    let mut out = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is NUL-terminated and `out` is a valid statvfs buffer.
    let rc = unsafe { libc::statvfs(path.as_ptr(), out.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled `out`.
    Ok(unsafe { out.assume_init() })
}

/// Keeps glibc from serving fuser's read buffers out of its heap.
///
/// Every FUSE session thread allocates a zeroed 16 MiB request buffer. The
/// first time, glibc maps such a block fresh from the kernel, and zero pages
/// cost nothing until touched. But freeing a mapped block raises glibc's
/// mmap threshold above its size (the "dynamic threshold"), so from the
/// second mount on, the five buffers of a session come from the heap and
/// are cleared with memset: 80 MiB written per mount, which took a warm
/// mount from 2-3 ms to 20-30 ms on a busy 2-core machine. Setting the
/// threshold once turns the dynamic adjustment off. Blocks up to 4 MiB (the
/// size of a gRPC batch) stay on the heap, as they would by default.
pub(crate) fn keep_large_allocations_mapped() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(target_env = "gnu")]
        // SAFETY: mallopt only changes an allocator tunable; any value in
        // range is valid, and it is called once.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        }
    });
}

/// Detaches the mount at `path` even if files in it are still open. A path
/// that is no longer a mount point is not an error.
pub(crate) fn lazy_unmount(path: &Path) -> io::Result<()> {
    let c = c_path(path)?;
    // SAFETY: `c` is a NUL-terminated path.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EINVAL) || err.raw_os_error() == Some(libc::ENOENT) {
            return Ok(());
        }
        return Err(err);
    }
    Ok(())
}

/// The FUSE connection number of the filesystem mounted at `path`: the
/// minor of its anonymous device.
pub(crate) fn connection_of(path: &Path) -> io::Result<u64> {
    let dev = fs::metadata(path)?.dev();
    Ok(u64::from(libc::minor(dev)))
}

/// Aborts FUSE connection `id`: every request in flight or to come fails,
/// and the daemon's threads see the device close. Mounts fusectl first if
/// the system has not.
pub(crate) fn abort_connection(id: u64) -> io::Result<()> {
    let abort = Path::new(FUSECTL).join(id.to_string()).join("abort");
    if !abort.exists() && !mount_fusectl()? {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} does not exist", abort.display()),
        ));
    }
    match fs::write(&abort, "1") {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Mounts fusectl where it belongs if nothing is mounted there; returns
/// whether it mounted it.
fn mount_fusectl() -> io::Result<bool> {
    let already = mounts()?.iter().any(|m| m.fstype == "fusectl");
    if already {
        return Ok(false);
    }
    let (source, target, fstype) = (c"fusectl", c_path(Path::new(FUSECTL))?, c"fusectl");
    // SAFETY: all pointers are NUL-terminated strings; data may be null.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(true)
}

/// One line of /proc/self/mountinfo.
#[derive(Debug)]
pub(crate) struct MountEntry {
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
    pub major: u32,
    pub minor: u32,
}

/// The mounts this process sees.
pub(crate) fn mounts() -> io::Result<Vec<MountEntry>> {
    let text = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text.lines().filter_map(parse_mountinfo_line).collect())
}

fn parse_mountinfo_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let left: Vec<&str> = left.split(' ').collect();
    let mut right = right.split(' ');
    let (major, minor) = left.get(2)?.split_once(':')?;
    Some(MountEntry {
        mount_point: PathBuf::from(<std::ffi::OsString as OsStringExt>::from_vec(unescape(
            left.get(4)?,
        ))),
        fstype: right.next()?.to_string(),
        source: String::from_utf8_lossy(&unescape(right.next()?)).into_owned(),
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if bytes[i] == b'\\'
            && let Some(digits) = octal
        {
            out.push(
                digits
                    .iter()
                    .fold(0u8, |v, d| v.wrapping_mul(8) + (d - b'0')),
            );
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_with_escapes() {
        let line =
            "612 27 0:77 / /tmp/lazy\\040barn/m rw,nosuid,nodev - fuse lazybarn rw,user_id=0";
        let entry = parse_mountinfo_line(line).expect("parses");
        assert_eq!(entry.mount_point, PathBuf::from("/tmp/lazy barn/m"));
        assert_eq!(entry.fstype, "fuse");
        assert_eq!(entry.source, "lazybarn");
        assert_eq!((entry.major, entry.minor), (0, 77));
    }
}
