//! Comparing the files two builds produced.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

/// Files under a build's output directory, by path relative to it.
pub type OutputFiles = BTreeMap<String, Vec<u8>>;

/// Reads every regular file under `bin/<package>` for each package, leaving
/// out runfiles trees and manifests: Bazel makes those itself, with
/// absolute paths of its own output base in them.
pub fn read_outputs(bin: &Path, packages: &[&str]) -> Result<OutputFiles> {
    let mut files = OutputFiles::new();
    for package in packages {
        read_dir_into(bin, &bin.join(package), &mut files)?;
    }
    Ok(files)
}

fn read_dir_into(bin: &Path, dir: &Path, files: &mut OutputFiles) -> Result<()> {
    let entries = fs::read_dir(dir).with_context(|| format!("Failed to list {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("Failed to list {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".runfiles") || name.ends_with(".runfiles_manifest") {
            continue;
        }
        let path = entry.path();
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            read_dir_into(bin, &path, files)?;
        } else if file_type.is_file() {
            let bytes =
                fs::read(&path).with_context(|| format!("Failed to read {}", path.display()))?;
            let relative = path.strip_prefix(bin).unwrap_or(&path);
            files.insert(relative.display().to_string(), bytes);
        }
    }
    Ok(())
}

/// Each way `actual` differs from `expected`, one line each; empty when the
/// same paths hold the same bytes.
pub fn differences(expected: &OutputFiles, actual: &OutputFiles) -> Vec<String> {
    let mut found = Vec::new();
    for (path, bytes) in expected {
        match actual.get(path) {
            None => found.push(format!("{path}: missing")),
            Some(other) if other != bytes => found.push(format!(
                "{path}: differs ({} bytes expected, {} found)",
                bytes.len(),
                other.len()
            )),
            Some(_) => {}
        }
    }
    for path in actual.keys().filter(|path| !expected.contains_key(*path)) {
        found.push(format!("{path}: not expected"));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_missing_changed_and_extra_files() {
        let expected = OutputFiles::from([
            ("a".to_string(), b"1".to_vec()),
            ("b".to_string(), b"2".to_vec()),
        ]);
        let actual = OutputFiles::from([
            ("b".to_string(), b"22".to_vec()),
            ("c".to_string(), b"3".to_vec()),
        ]);
        assert_eq!(
            differences(&expected, &actual),
            [
                "a: missing",
                "b: differs (1 bytes expected, 2 found)",
                "c: not expected"
            ]
        );
        assert!(differences(&expected, &expected).is_empty());
    }

    #[test]
    fn skips_runfiles() -> Result<()> {
        let dir = tempfile::tempdir()?;
        fs::create_dir_all(dir.path().join("app/hello.runfiles/x"))?;
        fs::write(dir.path().join("app/hello.runfiles/x/f"), "link")?;
        fs::write(dir.path().join("app/hello.runfiles_manifest"), "/abs")?;
        fs::write(dir.path().join("app/hello"), "elf")?;
        let files = read_outputs(dir.path(), &["app"])?;
        assert_eq!(files.keys().collect::<Vec<_>>(), ["app/hello"]);
        Ok(())
    }
}
