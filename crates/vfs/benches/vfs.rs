//! The vfs benchmark (scripts/bench-vfs): each scenario through a mount,
//! with FUSE passthrough on and off, next to the same work on a native copy
//! measured in the same run. Medians of several runs; ratios are native
//! time / mount time, so 1.0 means as fast as the local disk.
//!
//! The CAS is an in-process server over loopback gRPC (the remote-CAS
//! path); the blob cache is on the same disk as the native copy.
//! Knobs: LAZYBARN_BENCH_BIG_MB (default 1024), LAZYBARN_BENCH_RUNS (5).

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Fixture, open_tempdir, tree_of};

const PROGRAM: &str = "#include <boost/algorithm/string.hpp>\n\
    int main() { std::string s = \"a\"; boost::to_upper(s); return s == \"A\" ? 0 : 1; }\n";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn timed(runs: usize, mut f: impl FnMut()) -> Duration {
    median(
        (0..runs)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed()
            })
            .collect(),
    )
}

fn read_all(path: &Path) {
    let mut file = fs::File::open(path).expect("open");
    let mut buf = vec![0u8; 1 << 20];
    while file.read(&mut buf).expect("read") > 0 {}
}

fn read_small(dir: &Path) {
    for i in 0..1000 {
        fs::read(dir.join(format!("f{i}"))).expect("read small");
    }
}

fn run(dir: &Path, command: &str) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .status()
        .expect("sh");
    assert!(status.success(), "{command}");
}

fn drop_dentries() {
    // Cold native metadata: forget cached dentries and inodes (needs root).
    let _ = fs::write("/proc/sys/vm/drop_caches", "2");
}

const FIND: &str = "find boost -printf '%s %m %T@\\n' > /dev/null";
const COMPILE: &str = "g++ -c -I. main.cc -o /dev/null";

struct Row {
    name: &'static str,
    native: Duration,
    mounts: Vec<Duration>,
    target: &'static str,
}

fn main() {
    let big_mb = env_usize("LAZYBARN_BENCH_BIG_MB", 1024);
    let runs = env_usize("LAZYBARN_BENCH_RUNS", 5);
    let work = open_tempdir();
    let native = work.path().join("native");
    eprintln!("bench-vfs: preparing a {big_mb} MiB blob, 1,000 small files and the Boost headers");
    fs::create_dir_all(native.join("big")).expect("mkdir");
    fs::create_dir_all(native.join("small")).expect("mkdir");
    let chunk: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    {
        use std::io::Write;
        let mut big = fs::File::create(native.join("big/blob")).expect("create");
        for i in 0..big_mb {
            let mut c = chunk.clone();
            c[0] = i as u8;
            c[1] = (i >> 8) as u8;
            big.write_all(&c).expect("write");
        }
    }
    for i in 0..1000 {
        fs::write(
            native.join(format!("small/f{i}")),
            format!("{i:>4}").repeat(1024),
        )
        .expect("write");
    }
    run(work.path(), "cp -r /usr/include/boost native/boost");
    fs::write(native.join("main.cc"), PROGRAM).expect("write");
    let tree = tree_of(&native);

    // Warm the native copy's page cache like the mount's cache will be.
    read_all(&native.join("big/blob"));
    read_small(&native.join("small"));
    let native_big = timed(runs, || read_all(&native.join("big/blob")));
    let native_small = timed(runs, || read_small(&native.join("small")));
    drop_dentries();
    let native_find_cold = timed(1, || run(&native, FIND));
    let native_find_warm = timed(runs, || run(&native, FIND));
    run(&native, COMPILE);
    let native_compile = timed(3, || run(&native, COMPILE));

    let mut rows = vec![
        Row {
            name: "(a) read 1 GiB cached blob",
            native: native_big,
            mounts: vec![],
            target: ">= 0.9x",
        },
        Row {
            name: "(b) re-read 1,000 small files",
            native: native_small,
            mounts: vec![],
            target: "",
        },
        Row {
            name: "(c) find+stat Boost, cold",
            native: native_find_cold,
            mounts: vec![],
            target: ">= 0.5x",
        },
        Row {
            name: "(c) find+stat Boost, warm",
            native: native_find_warm,
            mounts: vec![],
            target: ">= 0.9x",
        },
        Row {
            name: "(c) find+stat Boost, next mount",
            native: native_find_cold,
            mounts: vec![],
            target: "",
        },
        Row {
            name: "(d) g++ -c, warm",
            native: native_compile,
            mounts: vec![],
            target: ">= 0.95x",
        },
        Row {
            name: "(d) g++ -c, cold cache",
            native: native_compile,
            mounts: vec![],
            target: "",
        },
        Row {
            name: "(e) mount the tree",
            native: Duration::ZERO,
            mounts: vec![],
            target: "< 50 ms",
        },
    ];
    let mut fixture = Fixture::with_tree(tree, true);
    for passthrough in [true, false] {
        eprintln!("bench-vfs: passthrough {passthrough}");
        let times = bench_mount(&mut fixture, passthrough, runs);
        for (row, time) in rows.iter_mut().zip(times) {
            row.mounts.push(time);
        }
    }
    print_table(&rows);
}

fn bench_mount(f: &mut Fixture, passthrough: bool, runs: usize) -> Vec<Duration> {
    // A cold compile first: fresh cache contents come only from this mount.
    f.remount(passthrough);
    let root = f.path("");
    let cold_compile = if passthrough {
        timed(1, || run(&root, COMPILE))
    } else {
        Duration::ZERO
    };
    read_all(&f.path("big/blob"));
    read_small(&f.path("small"));
    let big = timed(runs, || read_all(&f.path("big/blob")));
    let small = timed(runs, || read_small(&f.path("small")));
    // Cold: a worker that has seen nothing (empty blob and Directory caches).
    forget_everything(f);
    f.remount(passthrough);
    let root = f.path("");
    let find_cold = timed(1, || run(&root, FIND));
    let find_warm = timed(runs, || run(&root, FIND));
    // Next mount: the kernel knows nothing of the new mount, but the worker
    // keeps the Directory messages the previous mount fetched.
    f.remount(passthrough);
    let root = f.path("");
    let find_next = timed(1, || run(&root, FIND));
    run(&root, COMPILE);
    let compile = timed(3, || run(&root, COMPILE));
    let mount = mount_time(f, passthrough, runs);
    vec![
        big,
        small,
        find_cold,
        find_warm,
        find_next,
        compile,
        cold_compile,
        mount,
    ]
}

/// Replaces the fixture's cache with an empty one, as on a new worker.
fn forget_everything(f: &mut Fixture) {
    if let Some(mount) = f.mount.take() {
        f.rt.block_on(mount.unmount()).expect("unmount");
    }
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_nanos();
    let dir = f.dir.path().join(format!("cache-{n}"));
    f.cache = lazybarn_vfs::BlobCache::open(&dir, 1 << 34).expect("fresh cache");
}

/// Mount alone (fetch the root Directory, mount, handshake), without the
/// unmount that `remount` also does.
fn mount_time(f: &mut Fixture, passthrough: bool, runs: usize) -> Duration {
    let mut times = Vec::new();
    for _ in 0..runs {
        if let Some(mount) = f.mount.take() {
            f.rt.block_on(mount.unmount()).expect("unmount");
        }
        let started = Instant::now();
        f.remount(passthrough);
        times.push(started.elapsed());
    }
    median(times)
}

fn print_table(rows: &[Row]) {
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    let ratio = |native: Duration, mount: Duration| {
        if native.is_zero() || mount.is_zero() {
            "-".to_string()
        } else {
            format!("{:.2}x", native.as_secs_f64() / mount.as_secs_f64())
        }
    };
    println!("| scenario | native | passthrough on | ratio | passthrough off | ratio | target |");
    println!("|---|---|---|---|---|---|---|");
    for row in rows {
        let native = if row.native.is_zero() {
            "-".to_string()
        } else {
            ms(row.native)
        };
        let on = row.mounts.first().copied().unwrap_or_default();
        let off = row.mounts.get(1).copied().unwrap_or_default();
        let show = |d: Duration| if d.is_zero() { "-".to_string() } else { ms(d) };
        println!(
            "| {} | {native} | {} | {} | {} | {} | {} |",
            row.name,
            show(on),
            ratio(row.native, on),
            show(off),
            ratio(row.native, off),
            row.target
        );
    }
}
