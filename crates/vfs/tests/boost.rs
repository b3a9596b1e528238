//! The Boost headers (15,446 files, 180 MB) as an input root: mounting reads
//! one Directory, and a compile that includes boost/algorithm/string.hpp
//! fetches a small fraction of the tree.

mod common;

use std::fs;
use std::path::Path;

use common::{Fixture, sh_ok, tree_with};

const BOOST: &str = "/usr/include/boost";
const PROGRAM: &str = "#include <boost/algorithm/string.hpp>\n\
    int main() { std::string s = \"a\"; boost::to_upper(s); return s == \"A\" ? 0 : 1; }\n";

#[test]
fn compiling_against_boost_fetches_under_ten_percent() {
    assert!(
        Path::new(BOOST).is_dir(),
        "{BOOST} is missing: run scripts/install-deps (libboost1.81-dev)"
    );
    let tree = tree_with("boost", Path::new(BOOST));
    assert!(tree.files > 15_000, "{} files", tree.files);
    let total = tree.file_bytes;
    let mut f = Fixture::with_tree(tree, true);

    let stats = f.mount().stats();
    assert_eq!(
        stats.directories_loaded, 1,
        "mounting reads only the root Directory"
    );
    assert_eq!(f.source.fetches.lock().len(), 1);

    fs::write(f.path("main.cc"), PROGRAM).expect("write source");
    sh_ok(&f.path(""), None, "g++ -fsyntax-only -I. main.cc");
    let stats = f.mount().stats();
    assert!(
        stats.bytes_fetched * 10 < total,
        "fetched {} of {total} bytes",
        stats.bytes_fetched
    );
    assert!(stats.files_fetched > 50, "{stats:?}");
    let fetched = stats.files_fetched;

    // The same compile on a new mount without passthrough: every blob is
    // already cached, nothing is fetched again.
    f.remount(false);
    fs::write(f.path("main.cc"), PROGRAM).expect("write source");
    sh_ok(&f.path(""), None, "g++ -fsyntax-only -I. main.cc");
    let stats = f.mount().stats();
    assert_eq!(stats.files_fetched, 0, "{stats:?}");
    assert!(stats.cache_hits >= fetched, "{stats:?}");
}
