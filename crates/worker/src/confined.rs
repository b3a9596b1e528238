//! Root-safe file handling inside an action's directory.
//!
//! The worker runs as root, and everything below an action's input root
//! was shaped by a client (input symlinks) or by the action itself (any
//! file, symlink or directory it made). A path joined as text and handed to
//! `open` or `mkdir` follows whatever symlinks it meets, so `o/newdir` with
//! `o -> /etc` creates `/etc/newdir`, as root. Everything here therefore
//! works relative to directory file descriptors:
//!
//! - [`ConfinedDir::open_dir`] resolves a relative path with `openat2` and
//!   `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS |
//!   RESOLVE_NO_XDEV`: no symlink, no `..` out, no other filesystem.
//! - [`create_dirs`] makes the parents of declared outputs one component at
//!   a time and names the component that is a symlink or a file.
//! - [`walk`] visits a whole tree without recursion and with one directory
//!   open at a time: it goes down by `openat(O_NOFOLLOW)` and back up by
//!   `..`, checking that `..` is the directory it came from. A tree 100,000
//!   levels deep costs memory for the names on the path, not stack or
//!   descriptors. The native output capture uses it.
//! - [`remove_tree`] removes a tree the same way, but streams: it unlinks
//!   entries as it reads them, so a directory of millions of entries costs
//!   no memory either.
//!
//! Blocking code: call it from `spawn_blocking`.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{
    AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat, fchmod, fstat, mkdirat, openat, openat2,
    statat, unlinkat,
};

/// How every path below an action's root is resolved.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// Flags for opening a directory to work in.
const DIRECTORY: OFlags = OFlags::DIRECTORY
    .union(OFlags::RDONLY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// A directory opened by descriptor, below which paths are resolved without
/// ever crossing a symlink or leaving it.
#[derive(Debug)]
pub struct ConfinedDir {
    fd: OwnedFd,
}

impl ConfinedDir {
    /// Opens `path`, a directory the worker made itself. Its last component
    /// must not be a symlink.
    pub fn open(path: &Path) -> io::Result<ConfinedDir> {
        let fd = openat(rustix::fs::CWD, path, DIRECTORY, Mode::empty())?;
        Ok(ConfinedDir { fd })
    }

    /// Opens the directory at `relative` (no `..`, not absolute) below this
    /// one; an empty path is this directory again. ELOOP means a symlink was
    /// on the way, ENOTDIR a file, EXDEV a mount.
    pub fn open_dir(&self, relative: &Path) -> io::Result<ConfinedDir> {
        let relative = if relative.as_os_str().is_empty() {
            Path::new(".")
        } else {
            relative
        };
        let fd = openat2(&self.fd, relative, DIRECTORY, Mode::empty(), RESOLVE)?;
        Ok(ConfinedDir { fd })
    }

    /// Opens the regular file `name` of this directory for reading, refusing
    /// a symlink, and checks it is a regular file.
    pub fn open_file(&self, name: &OsStr) -> io::Result<std::fs::File> {
        let fd = openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        )?;
        let stat = fstat(&fd)?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(io::Error::other("not a regular file"));
        }
        Ok(std::fs::File::from(fd))
    }

    /// The status of `name` in this directory, not following a symlink;
    /// `None` if there is no such entry.
    pub fn stat(&self, name: &OsStr) -> io::Result<Option<Stat>> {
        match statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(stat)),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The target of the symlink `name` in this directory.
    pub fn read_link(&self, name: &OsStr) -> io::Result<OsString> {
        let target = rustix::fs::readlinkat(&self.fd, name, Vec::new())?;
        Ok(OsString::from_vec(target.into_bytes()))
    }

    /// The descriptor, for calls this module does not wrap.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Takes the descriptor.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

/// What stops a directory from being created below an action's root.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// A component on the way is a symlink (an input symlink, or one the
    /// client placed there): it is never followed.
    #[error("{0:?} is a symlink, and the worker never follows one")]
    Symlink(PathBuf),
    /// A component on the way is a file or something else not a directory.
    #[error("{0:?} is not a directory")]
    NotADirectory(PathBuf),
    /// Anything else.
    #[error("creating {path:?}: {source}")]
    Io {
        /// The component being created or opened.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// Creates `relative` and every missing parent below `root`, each with
/// `mode` exactly (the umask does not apply). Existing directories are
/// kept as they are. A symlink or a file on the way is refused, named.
pub fn create_dirs(root: &ConfinedDir, relative: &Path, mode: u32) -> Result<(), CreateError> {
    let mut current = root
        .open_dir(Path::new(""))
        .map_err(|source| CreateError::Io {
            path: PathBuf::new(),
            source,
        })?;
    let mut so_far = PathBuf::new();
    for component in relative.components() {
        let Component::Normal(name) = component else {
            return Err(CreateError::Io {
                path: relative.to_path_buf(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a plain relative path"),
            });
        };
        so_far.push(name);
        current = step_into(&current, name, &so_far, mode)?;
    }
    Ok(())
}

/// Opens or creates the directory `name` in `parent`.
fn step_into(
    parent: &ConfinedDir,
    name: &OsStr,
    path: &Path,
    mode: u32,
) -> Result<ConfinedDir, CreateError> {
    let io_error = |source: io::Error| CreateError::Io {
        path: path.to_path_buf(),
        source,
    };
    // Two rounds: a directory made by someone else between our mkdir and
    // open is simply opened.
    for _ in 0..2 {
        match parent.open_dir(Path::new(name)) {
            Ok(dir) => return Ok(dir),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(classify(parent, name, path, e)),
        }
        match mkdirat(parent.as_fd(), name, Mode::from_raw_mode(mode)) {
            Ok(()) => {
                let dir = parent.open_dir(Path::new(name)).map_err(io_error)?;
                fchmod(dir.as_fd(), Mode::from_raw_mode(mode)).map_err(|e| io_error(e.into()))?;
                return Ok(dir);
            }
            Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(io_error(e.into())),
        }
    }
    Err(io_error(io::Error::other("it keeps changing")))
}

/// Why `name` in `parent` could not be opened as a directory.
fn classify(parent: &ConfinedDir, name: &OsStr, path: &Path, error: io::Error) -> CreateError {
    match parent.stat(name) {
        Ok(Some(stat)) => match FileType::from_raw_mode(stat.st_mode) {
            FileType::Symlink => CreateError::Symlink(path.to_path_buf()),
            FileType::Directory => CreateError::Io {
                path: path.to_path_buf(),
                source: error,
            },
            _ => CreateError::NotADirectory(path.to_path_buf()),
        },
        _ => CreateError::Io {
            path: path.to_path_buf(),
            source: error,
        },
    }
}

/// The identity of a directory, to check that `..` leads back to it.
fn identity(stat: &Stat) -> (u64, u64) {
    (stat.st_dev, stat.st_ino)
}

/// What [`walk`] reports to its visitor. Names are of entries of the
/// directory `dir`, the one the walk is in.
pub trait Visitor {
    /// The visitor's error, which also carries the walk's own.
    type Error: From<WalkError>;

    /// An entry that is not a directory (or a directory on another
    /// filesystem, which is never entered).
    fn entry(&mut self, dir: &ConfinedDir, name: &OsStr, stat: &Stat) -> Result<(), Self::Error>;

    /// A subdirectory, just before the walk goes into it.
    fn enter(&mut self, dir: &ConfinedDir, name: &OsStr) -> Result<(), Self::Error>;

    /// The subdirectory `name` of `dir` is done: everything below it was
    /// reported. The walk is back in `dir`.
    fn leave(&mut self, dir: &ConfinedDir, name: &OsStr) -> Result<(), Self::Error>;
}

/// A failure of the walk itself.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    /// A system call failed.
    #[error("{what} {path:?}: {source}")]
    Io {
        /// What the walk was doing.
        what: &'static str,
        /// The path below the walk's top.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// `..` did not lead back to the directory the walk came from: someone
    /// moved a directory while it was walked.
    #[error("directory {0:?} moved while it was walked")]
    Moved(PathBuf),
    /// The tree holds more entries than the walk was allowed to list.
    #[error(
        "the tree holds more than {limit} files, directories and symlinks, this worker's \
         max_created_entries"
    )]
    TooManyEntries {
        /// The most entries the walk lists.
        limit: u64,
    },
}

/// A directory on the walk's path: the entries still to visit, and who its
/// parent is.
struct Level {
    name: OsString,
    parent: (u64, u64),
    pending: std::vec::IntoIter<(OsString, Stat)>,
}

/// Visits everything below `top`, depth first, entries of a directory in
/// name order: [`Visitor::entry`] for each non-directory, and
/// [`Visitor::enter`] / [`Visitor::leave`] around each subdirectory. Only
/// the current directory is open; the tree must not change meanwhile
/// (the action's processes are gone), and if it does the walk stops with
/// [`WalkError::Moved`] rather than wander out of it. Each directory's
/// entries are listed (and sorted) before they are visited, so at most
/// `max_entries` entries are listed in all; past that the walk stops with
/// [`WalkError::TooManyEntries`].
pub fn walk<V: Visitor>(
    top: ConfinedDir,
    visitor: &mut V,
    max_entries: u64,
) -> Result<(), V::Error> {
    let top_stat = fstat(top.as_fd()).map_err(|e| io_error("reading", &PathBuf::new(), e))?;
    let mut current = top;
    let mut path = PathBuf::new();
    let mut budget = max_entries;
    let mut stack = vec![Level {
        name: OsString::new(),
        parent: (0, 0),
        pending: list(&current, &path, &mut budget, max_entries)?.into_iter(),
    }];
    let mut current_id = identity(&top_stat);
    loop {
        let level = stack.last_mut().expect("the top level is popped last");
        let Some((name, stat)) = level.pending.next() else {
            if stack.len() == 1 {
                return Ok(());
            }
            let done = stack.pop().expect("checked non-empty");
            let parent = openat(current.as_fd(), "..", DIRECTORY, Mode::empty())
                .map_err(|e| io_error("going up from", &path, e))?;
            let parent_stat = fstat(&parent).map_err(|e| io_error("reading", &path, e))?;
            if identity(&parent_stat) != done.parent {
                return Err(WalkError::Moved(path).into());
            }
            current = ConfinedDir { fd: parent };
            current_id = done.parent;
            path.pop();
            visitor.leave(&current, &done.name)?;
            continue;
        };
        let is_dir = FileType::from_raw_mode(stat.st_mode) == FileType::Directory;
        if !is_dir || stat.st_dev != top_stat.st_dev {
            visitor.entry(&current, &name, &stat)?;
            continue;
        }
        visitor.enter(&current, &name)?;
        path.push(&name);
        let child = openat(current.as_fd(), name.as_os_str(), DIRECTORY, Mode::empty())
            .map_err(|e| io_error("opening", &path, e))?;
        let child_stat = fstat(&child).map_err(|e| io_error("reading", &path, e))?;
        if identity(&child_stat) != identity(&stat) {
            return Err(WalkError::Moved(path).into());
        }
        let parent = current_id;
        current = ConfinedDir { fd: child };
        current_id = identity(&child_stat);
        let pending = list(&current, &path, &mut budget, max_entries)?.into_iter();
        stack.push(Level {
            name,
            parent,
            pending,
        });
    }
}

fn io_error(what: &'static str, path: &Path, error: rustix::io::Errno) -> WalkError {
    WalkError::Io {
        what,
        path: path.to_path_buf(),
        source: error.into(),
    }
}

/// The entries of `dir` with their status, sorted by name, each taken from
/// `budget` (of `limit`).
fn list(
    dir: &ConfinedDir,
    path: &Path,
    budget: &mut u64,
    limit: u64,
) -> Result<Vec<(OsString, Stat)>, WalkError> {
    let fd = openat(dir.as_fd(), ".", DIRECTORY, Mode::empty())
        .map_err(|e| io_error("listing", path, e))?;
    let reader = rustix::fs::Dir::new(fd).map_err(|e| io_error("listing", path, e))?;
    let mut entries = Vec::new();
    for entry in reader {
        let entry = entry.map_err(|e| io_error("listing", path, e))?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        *budget = budget
            .checked_sub(1)
            .ok_or(WalkError::TooManyEntries { limit })?;
        let name = OsStr::from_bytes(name).to_os_string();
        let stat = statat(dir.as_fd(), name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io_error("reading", &path.join(&name), e))?;
        entries.push((name, stat));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(entries)
}

/// Removes the directory `path` and everything below it, however deep and
/// however wide, without following a symlink or entering another
/// filesystem. A missing `path` is not an error.
///
/// Unlike [`walk`], removal needs no order and no listing held in memory:
/// it unlinks entries as it reads them, and stops reading only to go down
/// into a directory that is not empty. Back from it, it reads the directory
/// again from the start, where everything it passed is already gone. Memory
/// is the names on the current path; one directory is open at a time.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let as_root = rustix::process::geteuid().is_root();
    if !as_root {
        // The owner may have to give itself the right to list and empty a
        // directory first (an action can chmod its own to 0).
        let _ = rustix::fs::chmod(path, Mode::from_raw_mode(0o700));
    }
    let top = match ConfinedDir::open(path) {
        Ok(top) => top,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR) | Some(libc::ELOOP)) => {
            return std::fs::remove_file(path);
        }
        Err(e) => return Err(e),
    };
    let at = |what: &str, below: &Path, e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("{what} {}: {e}", path.join(below).display()),
        )
    };
    let top_stat = fstat(top.as_fd()).map_err(|e| at("reading", Path::new(""), e.into()))?;
    let mut current = top;
    let mut current_id = identity(&top_stat);
    // The directories entered below `path`: each one's name and its parent.
    let mut entered: Vec<(OsString, (u64, u64))> = Vec::new();
    let mut below = PathBuf::new();
    loop {
        let full = clear_entries(&current, top_stat.st_dev, as_root)
            .map_err(|e| at("emptying", &below, e))?;
        if let Some((name, stat)) = full {
            below.push(&name);
            let child = openat(current.as_fd(), name.as_os_str(), DIRECTORY, Mode::empty())
                .map_err(|e| at("opening", &below, e.into()))?;
            let child_stat = fstat(&child).map_err(|e| at("reading", &below, e.into()))?;
            if identity(&child_stat) != identity(&stat) {
                return Err(at("removing", &below, io::Error::other("it moved")));
            }
            entered.push((name, current_id));
            current = ConfinedDir { fd: child };
            current_id = identity(&child_stat);
            continue;
        }
        let Some((name, parent_id)) = entered.pop() else {
            break;
        };
        let parent = openat(current.as_fd(), "..", DIRECTORY, Mode::empty())
            .map_err(|e| at("going up from", &below, e.into()))?;
        let parent_stat = fstat(&parent).map_err(|e| at("reading", &below, e.into()))?;
        if identity(&parent_stat) != parent_id {
            return Err(at("removing", &below, io::Error::other("it moved")));
        }
        current = ConfinedDir { fd: parent };
        current_id = parent_id;
        unlinkat(current.as_fd(), name.as_os_str(), AtFlags::REMOVEDIR)
            .map_err(|e| at("removing", &below, e.into()))?;
        below.pop();
    }
    drop(current);
    std::fs::remove_dir(path)
}

/// Unlinks what `dir` holds as it reads it: files, symlinks and empty
/// directories. Returns the first directory that is not empty (to go down
/// into), or `None` once `dir` is empty. A mount point is an error (EBUSY),
/// never entered.
fn clear_entries(
    dir: &ConfinedDir,
    device: u64,
    as_root: bool,
) -> io::Result<Option<(OsString, Stat)>> {
    let listing = openat(dir.as_fd(), ".", DIRECTORY, Mode::empty())?;
    for entry in rustix::fs::Dir::new(listing)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let name = OsStr::from_bytes(name);
        let is_dir = match entry.file_type() {
            FileType::Directory => true,
            FileType::Unknown => {
                let stat = statat(dir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW)?;
                FileType::from_raw_mode(stat.st_mode) == FileType::Directory
            }
            _ => false,
        };
        if !is_dir {
            unlinkat(dir.as_fd(), name, AtFlags::empty())?;
            continue;
        }
        match unlinkat(dir.as_fd(), name, AtFlags::REMOVEDIR) {
            Ok(()) => {}
            Err(rustix::io::Errno::NOTEMPTY) | Err(rustix::io::Errno::EXIST) => {
                let stat = statat(dir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW)?;
                if stat.st_dev != device {
                    return Err(io::Error::from_raw_os_error(libc::EBUSY));
                }
                if !as_root {
                    let _ = rustix::fs::chmodat(
                        dir.as_fd(),
                        name,
                        Mode::from_raw_mode(0o700),
                        AtFlags::empty(),
                    );
                }
                return Ok(Some((name.to_os_string(), stat)));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn create_dirs_refuses_symlinks_and_files_on_the_way() {
        let outside = tempfile::tempdir().expect("tempdir");
        let root = tempfile::tempdir().expect("tempdir");
        symlink(outside.path(), root.path().join("o")).expect("symlink");
        std::fs::write(root.path().join("f"), b"file").expect("file");
        let dir = ConfinedDir::open(root.path()).expect("open");

        let err = create_dirs(&dir, Path::new("o/newdir"), 0o777).expect_err("through a symlink");
        assert!(
            matches!(&err, CreateError::Symlink(p) if p == Path::new("o")),
            "{err}"
        );
        assert!(
            !outside.path().join("newdir").exists(),
            "created outside the root"
        );

        let err = create_dirs(&dir, Path::new("f/x"), 0o777).expect_err("through a file");
        assert!(
            matches!(&err, CreateError::NotADirectory(p) if p == Path::new("f")),
            "{err}"
        );

        create_dirs(&dir, Path::new("a/b/c"), 0o777).expect("plain directories");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(root.path().join("a/b/c"))
            .expect("made")
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o777, "the umask does not narrow the mode");
    }

    #[test]
    fn open_dir_never_leaves_the_root() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(root.path().join("sub")).expect("mkdir");
        symlink("/", root.path().join("sub/up")).expect("symlink");
        let dir = ConfinedDir::open(root.path()).expect("open");
        assert!(dir.open_dir(Path::new("sub")).is_ok());
        for escape in ["sub/up", "..", "sub/../.."] {
            assert!(dir.open_dir(Path::new(escape)).is_err(), "{escape} opened");
        }
    }

    /// Makes a chain of `depth` directories named `d` below `dir`, by
    /// descriptor (the path is far longer than PATH_MAX).
    fn deep_chain(dir: &Path, depth: usize) {
        let mut current = ConfinedDir::open(dir).expect("open");
        for _ in 0..depth {
            mkdirat(current.as_fd(), "d", Mode::from_raw_mode(0o755)).expect("mkdir");
            let fd = openat(current.as_fd(), "d", DIRECTORY, Mode::empty()).expect("open");
            current = ConfinedDir { fd };
        }
        let file = openat(
            current.as_fd(),
            "bottom",
            OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .expect("file");
        drop(file);
    }

    #[test]
    fn remove_tree_handles_depth_symlinks_and_unreadable_directories() {
        let keep = tempfile::tempdir().expect("tempdir");
        std::fs::write(keep.path().join("precious"), b"keep").expect("file");
        let root = tempfile::tempdir().expect("tempdir");
        let top = root.path().join("action");
        std::fs::create_dir(&top).expect("mkdir");
        deep_chain(&top, 20_000);
        symlink(keep.path(), top.join("link")).expect("symlink");
        // Wide as well as deep: non-empty directories among files, so the
        // removal goes down and reads its directory again many times.
        for i in 0..300 {
            let sub = top.join(format!("wide-{i}"));
            std::fs::create_dir_all(sub.join("inner")).expect("mkdir");
            std::fs::write(sub.join("inner/f"), b"f").expect("file");
            std::fs::write(top.join(format!("file-{i}")), b"f").expect("file");
        }
        std::fs::create_dir(top.join("locked")).expect("mkdir");
        std::fs::write(top.join("locked/x"), b"x").expect("file");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(top.join("locked"), std::fs::Permissions::from_mode(0o000))
            .expect("chmod");

        // A small stack, as on a tokio blocking thread: recursion would overflow it.
        let target = top.clone();
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || remove_tree(&target))
            .expect("thread")
            .join()
            .expect("no stack overflow")
            .expect("removed");
        assert!(!top.exists());
        assert!(keep.path().join("precious").exists(), "followed a symlink");
        remove_tree(&top).expect("a missing tree is already removed");
    }
}
