//! Loading the input root into the node table, one Directory at a time.
//!
//! A Directory message is fetched the first time its directory is looked
//! into, checked against its digest, validated, and turned into children.
//! Names are checked when loaded: empty, ".", "..", containing "/" or NUL,
//! or used twice in one Directory (a file and a directory alike) make the
//! input root invalid, reported as such (naming the entry and the Directory)
//! and never used as a path. Each entry loaded counts towards the mount's
//! `max_input_entries`: shared subtrees make a few KB of Directory messages
//! into hundreds of thousands of paths, and a load past the cap fails whole.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use lazybarn_cas::Digest;
use lazybarn_proto::reapi::{self, Directory, NodeProperties};
use prost::Message;

use crate::error::{Result, VfsError};
use crate::node::{Children, Ino, InputFileKey, Meta, Node, NodeKind, NodeTable, ROOT};

/// The timestamp of every input node without an mtime property: fixed, so
/// the same inputs always look the same (2000-01-01T00:00:00Z, as Buildbarn).
pub const INPUT_MTIME: Duration = Duration::from_secs(946_684_800);

/// Owner and modes given to input nodes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct InputOwner {
    pub uid: u32,
    pub gid: u32,
    /// The only uid the mount serves, if one: the root directory is then
    /// its own and 0700, so the kernel itself keeps other uids out.
    pub private_to: Option<u32>,
}

/// Checks `bytes` against `digest` and decodes the Directory message.
///
/// Bytes that do not hash to `digest` are [`VfsError::Corrupt`], not an
/// invalid input root: the CAS checks digests on upload, so the client
/// cannot have sent them; the CAS served bad bytes, and another fetch may
/// not (UNAVAILABLE). Bytes that match but do not decode are what the
/// client uploaded, and will never decode (INVALID_ARGUMENT).
pub(crate) fn decode_directory(digest: Digest, bytes: &Bytes) -> Result<Directory> {
    let actual = Digest::of(bytes);
    if actual != digest {
        return Err(VfsError::Corrupt { digest, actual });
    }
    Directory::decode(bytes.clone())
        .map_err(|e| VfsError::InvalidInputRoot(format!("Directory {digest} does not decode: {e}")))
}

/// Fills directory `ino` with the children listed in `directory`; returns
/// false if someone loaded it first (or it is gone). Nothing changes if the
/// message is invalid or would take the table past its cap.
pub(crate) fn load_children(
    table: &mut NodeTable,
    ino: Ino,
    digest: Digest,
    directory: &Directory,
    owner: InputOwner,
) -> Result<bool> {
    if !matches!(
        table.get(ino).map(|node| &node.kind),
        Ok(NodeKind::Dir {
            children: Children::Unloaded(_),
            ..
        })
    ) {
        return Ok(false);
    }
    let added = directory.files.len() + directory.directories.len() + directory.symlinks.len();
    let total = table.input_entries.saturating_add(added as u64);
    if total > table.max_input_entries {
        return Err(VfsError::InputTooLarge {
            digest,
            entries: total,
            limit: table.max_input_entries,
        });
    }
    let entries = validate(digest, directory)?;
    let mut children = BTreeMap::new();
    for entry in entries {
        let child = match entry {
            Entry::File {
                name,
                digest,
                executable,
                properties,
            } => {
                let perm = file_perm(executable, properties);
                let mtime = mtime(properties);
                let meta = input_meta(perm, mtime, owner);
                let child = table.input_file(
                    InputFileKey {
                        digest,
                        perm,
                        mtime,
                    },
                    meta,
                );
                if let Ok(node) = table.get_mut(child) {
                    node.nlink += 1;
                }
                (name, child)
            }
            Entry::Dir { name, digest } => {
                let meta = input_meta(0o777, mtime(None), owner);
                let child = table.insert(Node {
                    kind: NodeKind::Dir {
                        parent: ino,
                        children: Children::Unloaded(digest),
                    },
                    meta,
                    nlink: 1,
                    open: 0,
                    created_names: 0,
                });
                (name, child)
            }
            Entry::Symlink {
                name,
                target,
                properties,
            } => {
                let meta = input_meta(0o777, mtime(properties), owner);
                let child = table.insert(Node {
                    kind: NodeKind::Symlink { target },
                    meta,
                    nlink: 1,
                    open: 0,
                    created_names: 0,
                });
                (name, child)
            }
        };
        children.insert(child.0, child.1);
    }
    table.input_entries = total;
    let node = table
        .get_mut(ino)
        .expect("checked to be an unloaded directory above, under the same lock");
    if let Some(properties) = &directory.node_properties {
        node.meta.mtime = mtime(Some(properties));
        if let Some(mode) = properties.unix_mode {
            node.meta.perm = (mode & 0o7777) as u16;
        }
    }
    if ino == ROOT && owner.private_to.is_some() {
        node.meta.perm &= 0o7700;
    }
    if let NodeKind::Dir { children: slot, .. } = &mut node.kind {
        *slot = Children::Loaded(children);
    }
    Ok(true)
}

enum Entry<'a> {
    File {
        name: OsString,
        digest: Digest,
        executable: bool,
        properties: Option<&'a NodeProperties>,
    },
    Dir {
        name: OsString,
        digest: Digest,
    },
    Symlink {
        name: OsString,
        target: OsString,
        properties: Option<&'a NodeProperties>,
    },
}

fn validate(digest: Digest, directory: &Directory) -> Result<Vec<Entry<'_>>> {
    let invalid = |what: String| VfsError::InvalidInputRoot(format!("Directory {digest}: {what}"));
    let mut seen = HashSet::new();
    let mut entries = Vec::new();
    let mut check_name = |name: &str| -> Result<OsString> {
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
            return Err(invalid(format!("invalid name {name:?}")));
        }
        if !seen.insert(name.to_string()) {
            return Err(invalid(format!("name {name:?} names more than one entry")));
        }
        Ok(OsString::from(name))
    };
    let parse = |d: Option<&reapi::Digest>, name: &str| {
        Digest::from_proto(d).map_err(|e| {
            VfsError::InvalidInputRoot(format!("Directory {digest}: entry {name:?}: {e}"))
        })
    };
    for file in &directory.files {
        entries.push(Entry::File {
            name: check_name(&file.name)?,
            digest: parse(file.digest.as_ref(), &file.name)?,
            executable: file.is_executable,
            properties: file.node_properties.as_ref(),
        });
    }
    for dir in &directory.directories {
        entries.push(Entry::Dir {
            name: check_name(&dir.name)?,
            digest: parse(dir.digest.as_ref(), &dir.name)?,
        });
    }
    for link in &directory.symlinks {
        if link.target.is_empty() || link.target.contains('\0') {
            return Err(invalid(format!(
                "symlink {:?} has invalid target {:?}",
                link.name, link.target
            )));
        }
        entries.push(Entry::Symlink {
            name: check_name(&link.name)?,
            target: OsString::from(&link.target),
            properties: link.node_properties.as_ref(),
        });
    }
    Ok(entries)
}

/// Input files are never writable, whatever mode the client sent.
fn file_perm(executable: bool, properties: Option<&NodeProperties>) -> u16 {
    let mode = match properties.and_then(|p| p.unix_mode) {
        Some(mode) => (mode & 0o7777) as u16,
        None if executable => 0o555,
        None => 0o444,
    };
    let mode = if executable { mode | 0o111 } else { mode };
    mode & !0o222
}

fn mtime(properties: Option<&NodeProperties>) -> SystemTime {
    properties
        .and_then(|p| p.mtime.as_ref())
        .and_then(|t| {
            let secs = u64::try_from(t.seconds).ok()?;
            let nanos = u32::try_from(t.nanos).ok()?;
            UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
        })
        .unwrap_or(UNIX_EPOCH + INPUT_MTIME)
}

fn input_meta(perm: u16, mtime: SystemTime, owner: InputOwner) -> Meta {
    Meta {
        perm,
        uid: owner.uid,
        gid: owner.gid,
        mtime,
        ctime: mtime,
    }
}

/// The metadata of the root directory before it is loaded: private to the
/// one uid served, if there is one.
pub(crate) fn root_meta(owner: InputOwner) -> Meta {
    match owner.private_to {
        Some(uid) => Meta {
            uid,
            ..input_meta(0o700, mtime(None), owner)
        },
        None => input_meta(0o777, mtime(None), owner),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::EntryCaps;
    use lazybarn_proto::reapi::{DirectoryNode, FileNode, SymlinkNode};

    use crate::testing::OWNER;

    fn file(name: &str) -> FileNode {
        FileNode {
            name: name.into(),
            digest: Some(Digest::of(name.as_bytes()).to_proto()),
            is_executable: false,
            node_properties: None,
        }
    }

    fn caps(input: u64) -> EntryCaps {
        EntryCaps {
            input,
            created: 1_000,
        }
    }

    fn load(directory: Directory) -> Result<NodeTable> {
        let digest = Digest::of(&directory.encode_to_vec());
        let mut table = NodeTable::new(digest, root_meta(OWNER), caps(1_000));
        load_children(&mut table, ROOT, digest, &directory, OWNER)?;
        Ok(table)
    }

    #[test]
    fn bad_names_make_the_input_root_invalid() {
        for bad in ["", ".", "..", "a/b", "../etc", "nul\0"] {
            let err = load(Directory {
                files: vec![file(bad)],
                ..Default::default()
            })
            .err()
            .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(matches!(err, VfsError::InvalidInputRoot(_)), "{err}");
        }
        let twice = Directory {
            files: vec![file("a")],
            symlinks: vec![SymlinkNode {
                name: "a".into(),
                target: "b".into(),
                node_properties: None,
            }],
            ..Default::default()
        };
        assert!(load(twice).is_err());
    }

    #[test]
    fn identical_files_share_an_inode_and_subdirectories_stay_unloaded() {
        let same = |name: &str| FileNode {
            name: name.into(),
            digest: Some(Digest::of(b"same").to_proto()),
            is_executable: false,
            node_properties: None,
        };
        let table = load(Directory {
            files: vec![same("a"), same("b")],
            directories: vec![DirectoryNode {
                name: "sub".into(),
                digest: Some(Digest::of(b"sub").to_proto()),
            }],
            ..Default::default()
        })
        .expect("valid");
        let a = table.child(ROOT, "a".as_ref()).expect("a");
        let b = table.child(ROOT, "b".as_ref()).expect("b");
        assert_eq!(a, b);
        assert_eq!(table.get(a).expect("node").nlink, 2);
        let sub = table.child(ROOT, "sub".as_ref()).expect("sub");
        assert!(matches!(
            table.children(sub),
            Err(crate::node::Pending::Load(_))
        ));
    }

    #[test]
    fn a_load_past_the_cap_fails_whole_and_counts_nothing() {
        let files = |n: usize| Directory {
            files: (0..n).map(|i| file(&format!("f{i}"))).collect(),
            ..Default::default()
        };
        let directory = files(3);
        let digest = Digest::of(&directory.encode_to_vec());
        let mut table = NodeTable::new(digest, root_meta(OWNER), caps(2));
        let err = load_children(&mut table, ROOT, digest, &directory, OWNER)
            .expect_err("3 entries over a cap of 2");
        assert!(matches!(
            err,
            VfsError::InputTooLarge {
                entries: 3,
                limit: 2,
                ..
            }
        ));
        assert_eq!(table.input_entries, 0);
        assert!(table.children(ROOT).is_err(), "still unloaded");

        table.max_input_entries = 3;
        assert!(load_children(&mut table, ROOT, digest, &directory, OWNER).expect("fits"));
        assert_eq!(table.input_entries, 3);
    }

    #[test]
    fn messages_name_the_entry_and_the_directory() {
        let bad_digest = Directory {
            files: vec![FileNode {
                name: "f".into(),
                digest: Some(reapi::Digest {
                    hash: "not hex".into(),
                    size_bytes: 1,
                }),
                is_executable: false,
                node_properties: None,
            }],
            ..Default::default()
        };
        let file_and_dir = Directory {
            files: vec![file("x")],
            directories: vec![DirectoryNode {
                name: "x".into(),
                digest: Some(Digest::of(b"x").to_proto()),
            }],
            ..Default::default()
        };
        for (directory, name) in [(bad_digest, "\"f\""), (file_and_dir, "\"x\"")] {
            let digest = Digest::of(&directory.encode_to_vec());
            let err = load(directory).err().expect("invalid");
            let message = err.to_string();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{message}");
            assert!(message.contains(name), "{message}");
            assert!(message.contains(&digest.to_string()), "{message}");
        }
    }
}
