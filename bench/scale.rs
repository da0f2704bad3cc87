//! Scale: index build time, resident memory and bytes per role assignment at 1M and 10M
//! assignments, and the load of a snapshot from MessagePack (read + decode + validate +
//! `Index::build`), each measured in a fresh child process.
//!
//! `cargo run --release --example scale -- [SIZES]` (SIZES: comma-separated, `1m,10m` by
//! default; `1k`, `100k` too; or env `SIZES`). For each size the snapshot is generated with
//! `model::generate::Params` scaled (bench/sizes.rs) and written to
//! bench/data/snapshot-<size>.msgpack if absent; then this binary re-executes itself as
//! `scale measure FILE`, so the generator's memory is not in the figures. The child reads its
//! VmRSS before loading anything (the baseline), loads the file, drops the document and the
//! bytes, and reads VmRSS and VmHWM from /proc/self/status with only the index left. Rows
//! prefixed `TABLE|` are for bench/run.sh.

// A bench that cannot do what it is meant to measure must stop loudly: `expect` and `panic`
// are the right tools here, unlike in the library.
#![allow(clippy::expect_used, clippy::panic)]

#[path = "sizes.rs"]
mod sizes;

// The allocator of the permd binary (src/main.rs), so the memory figures are permd's.
permd::jemalloc!();

use permd::index::Index;
use permd::model::generate::generate;
use permd::model::{Encoding, Snapshot, validate};
use permd::sync::Cache;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// A `/proc/self/status` field in kB (VmRSS, VmHWM).
fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status is readable");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// VmRSS once it has settled: jemalloc returns freed pages from a background thread over
/// about a second (`permd::JEMALLOC_CONF`'s decay), and not at once: a reading right after a
/// load still holds them, and two readings half a second apart can agree before the purge
/// starts. Sampled every 500 ms until four in a row (1.5 s) agree within 1% (at most 30 s).
fn settled_rss_kb() -> u64 {
    settled(|| status_kb("VmRSS"))
}

/// `read` sampled every 500 ms until four samples in a row agree within 1% (at most 30 s).
fn settled(read: impl Fn() -> u64) -> u64 {
    let mut window = vec![read()];
    for _ in 0..60 {
        std::thread::sleep(std::time::Duration::from_millis(500));
        window.push(read());
        if window.len() > 4 {
            window.remove(0);
        }
        let (lo, hi) = (
            window.iter().min().copied().unwrap_or(0),
            window.iter().max().copied().unwrap_or(0),
        );
        if window.len() == 4 && (hi - lo) * 100 <= lo {
            break;
        }
    }
    window.last().copied().unwrap_or(0)
}

/// The child: load FILE as permd's file source does (`Index::from_msgpack` reading the file
/// through its window: the bytes are never held whole, no document is decoded), report one
/// `STREAMED k=v …` line.
fn measure_streamed(file: &Path) {
    let baseline_kb = status_kb("VmRSS");
    let started = Instant::now();
    // VmRSS every 25 ms while loading, for the timeline (PERMD_SCALE_TIMELINE=1).
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = std::env::var_os("PERMD_SCALE_TIMELINE").map(|_| {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                samples.push((started.elapsed().as_secs_f64(), status_kb("VmRSS")));
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            samples
        })
    });
    let f = std::fs::File::open(file).unwrap_or_else(|e| panic!("cannot read `{}`: {e}", file.display()));
    let index = match Index::from_msgpack(f).expect("the snapshot reads") {
        permd::index::Streamed::Built(index) => *index,
        permd::index::Streamed::Declined => panic!("the streamed load declined `{}`", file.display()),
    };
    let total = started.elapsed();
    let hwm_kb = status_kb("VmHWM");
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(samples) = sampler.and_then(|h| h.join().ok()) {
        for (t, kb) in samples.iter().step_by(4) {
            eprintln!("[scale] t={t:.2}s VmRSS {} MiB", kb / 1024);
        }
    }
    let rss_kb = settled_rss_kb();
    println!(
        "STREAMED assignments={} total_s={} baseline_kb={baseline_kb} rss_kb={rss_kb} hwm_kb={hwm_kb}",
        index.counts().role_assignments,
        total.as_secs_f64(),
    );
}

/// The child: load FILE the reference way (the whole file read, decoded into a document,
/// validated beside `Index::build`), report one `MEASURED k=v …` line.
fn measure(file: &Path) {
    let baseline_kb = status_kb("VmRSS");
    let started = Instant::now();
    let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("cannot read `{}`: {e}", file.display()));
    let read = started.elapsed();
    let t = Instant::now();
    let snapshot = Snapshot::decode(&bytes, Encoding::MessagePack).expect("the snapshot decodes");
    let decode = t.elapsed();
    drop(bytes);
    // `sync::validate_and_build`, each side timed: validation on a second thread beside
    // `Index::build`, so each runs beside the other, as in permd.
    let t = Instant::now();
    let (index, validated, build) = std::thread::scope(|scope| {
        let valid = scope.spawn(|| {
            let t = Instant::now();
            validate(&snapshot).expect("the snapshot is valid");
            t.elapsed()
        });
        let t = Instant::now();
        let index = Index::build(&snapshot);
        let build = t.elapsed();
        (index, valid.join().expect("validation ends"), build)
    });
    let both = t.elapsed();
    let total = started.elapsed();
    let assignments = snapshot.role_assignments.len();
    let t = Instant::now();
    drop(snapshot);
    let dropped = t.elapsed();
    let rss_kb = settled_rss_kb();
    let hwm_kb = status_kb("VmHWM");
    let c = index.counts();
    assert_eq!(c.role_assignments, assignments, "the index holds every assignment");
    println!(
        "MEASURED assignments={assignments} resources={} read_s={} decode_s={} validate_s={} build_s={} \
         both_s={} total_s={} drop_s={} baseline_kb={baseline_kb} rss_kb={rss_kb} hwm_kb={hwm_kb}",
        c.resources,
        read.as_secs_f64(),
        decode.as_secs_f64(),
        validated.as_secs_f64(),
        build.as_secs_f64(),
        both.as_secs_f64(),
        total.as_secs_f64(),
        dropped.as_secs_f64(),
    );
    drop(index);
}

/// The cache's source name in these files; any name does, read and write agree on it.
const CACHE_SOURCE: &str = "bench";

/// The child: write DIR's cache file from the snapshot FILE (once, the file is kept): the
/// index as the file source builds it (`Index::from_msgpack`), its image written as
/// `write_each_version` writes it.
fn write_cache(file: &Path, dir: &Path) {
    let f = std::fs::File::open(file).unwrap_or_else(|e| panic!("cannot read `{}`: {e}", file.display()));
    let index = match Index::from_msgpack(f).expect("the snapshot reads") {
        permd::index::Streamed::Built(index) => *index,
        permd::index::Streamed::Declined => panic!("the streamed load declined `{}`", file.display()),
    };
    let t = Instant::now();
    Cache::new(dir.into(), CACHE_SOURCE.into(), usize::MAX)
        .write_index(&index, std::time::SystemTime::now())
        .expect("the cache is written");
    println!("WROTE {} write_s={}", dir.display(), t.elapsed().as_secs_f64());
}

/// Whether DIR's cache file is one this build writes (an index image, `PERMDC02`), not the
/// document an earlier build wrote.
fn cache_is_current(dir: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 8];
    std::fs::File::open(dir.join(permd::sync::CACHE_FILE))
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"PERMDC02"
}

/// The child: a warm start from DIR's cache (`Cache::load_index`: read, SHA-256, the image
/// read back and checked), one `CACHED k=v …` line.
fn measure_cache(dir: &Path) {
    let baseline_kb = status_kb("VmRSS");
    let t = Instant::now();
    let (index, _) = Cache::new(dir.into(), CACHE_SOURCE.into(), usize::MAX)
        .load_index()
        .expect("the cache loads")
        .expect("there is a cache");
    let load = t.elapsed();
    let rss_kb = settled_rss_kb();
    let hwm_kb = status_kb("VmHWM");
    let bytes = std::fs::metadata(dir.join(permd::sync::CACHE_FILE)).map_or(0, |m| m.len());
    println!(
        "CACHED assignments={} load_s={} file_bytes={bytes} baseline_kb={baseline_kb} rss_kb={rss_kb} hwm_kb={hwm_kb}",
        index.counts().role_assignments,
        load.as_secs_f64()
    );
}

/// Runs this binary as a child with `args`; its line starting with `prefix`.
fn child(me: &Path, args: &[&std::ffi::OsStr], prefix: &str) -> String {
    let t = Instant::now();
    let out = Command::new(me)
        .args(args)
        .output()
        .expect("the measuring child starts");
    let wall = t.elapsed();
    assert!(
        out.status.success(),
        "the measuring child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} line from the child: {stdout}"))
        .to_owned();
    eprintln!("[scale] {line} (child wall {wall:.1?})");
    line
}

/// Writes bench/data/snapshot-<size>.msgpack unless it is there; returns its path.
fn ensure_snapshot(data: &Path, name: &str, assignments: usize) -> PathBuf {
    let path = data.join(format!("snapshot-{name}.msgpack"));
    if path.exists() {
        eprintln!("[scale] using {}", path.display());
        return path;
    }
    let p = sizes::params_of(name, assignments);
    eprintln!("[scale] generating {name}: {p:?}");
    let t = Instant::now();
    let snapshot = generate(&p);
    eprintln!(
        "[scale] generated {} assignments, {} resources in {:.1?}",
        snapshot.role_assignments.len(),
        snapshot.resources.len(),
        t.elapsed()
    );
    let t = Instant::now();
    let bytes = snapshot.encode(Encoding::MessagePack).expect("the snapshot encodes");
    drop(snapshot);
    std::fs::create_dir_all(data).expect("bench/data can be created");
    // Written under another name first, so an interrupted run leaves no half file behind.
    let part = path.with_extension("msgpack.part");
    std::fs::write(&part, &bytes).expect("the snapshot can be written");
    std::fs::rename(&part, &path).expect("the snapshot can be renamed");
    eprintln!(
        "[scale] encoded and wrote {} ({:.1} MB) in {:.1?}",
        path.display(),
        bytes.len() as f64 / 1e6,
        t.elapsed()
    );
    path
}

/// `permd serve`'s VmRSS in kB with FILE as its source, once ready and settled (`settled`:
/// jemalloc hands freed pages back over a second or two). `None` without the permd binary (PERMD_BIN, else the one beside
/// this example's directory).
fn serve_rss_kb(file: &Path) -> Option<u64> {
    use std::io::{Read, Write};
    let bin = std::env::var_os("PERMD_BIN").map(PathBuf::from).or_else(|| {
        let me = std::env::current_exe().ok()?;
        Some(me.parent()?.parent()?.join("permd"))
    })?;
    if !bin.exists() {
        eprintln!("[scale] no permd binary at {}: serve rows skipped", bin.display());
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let mut child = Command::new(&bin)
        .args(["serve", "--source"])
        .arg(format!("file://{}", file.display()))
        .args([
            "--http-addr",
            &format!("127.0.0.1:{port}"),
            "--grpc-addr",
            "127.0.0.1:0",
        ])
        .args(["--log-level", "warn"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("permd serve starts");
    let ready = || -> bool {
        let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = c.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        out.starts_with("HTTP/1.1 200")
    };
    let t = Instant::now();
    while !ready() {
        assert!(t.elapsed().as_secs() < 300, "permd serve not ready in 300 s");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let rss = || -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    let last = settled(rss);
    let _ = child.kill();
    let _ = child.wait();
    Some(last)
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in `{line}`"))
}
fn num(line: &str, key: &str) -> f64 {
    field(line, key)
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in `{line}`"))
}

fn met(ok: bool) -> &'static str {
    if ok { "yes" } else { "no" }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("measure") => return measure(Path::new(args.get(2).expect("measure FILE"))),
        Some("stream") => return measure_streamed(Path::new(args.get(2).expect("stream FILE"))),
        Some("write-cache") => {
            let (file, dir) = (args.get(2), args.get(3));
            return write_cache(
                Path::new(file.expect("write-cache FILE DIR")),
                Path::new(dir.expect("write-cache FILE DIR")),
            );
        }
        Some("cache") => return measure_cache(Path::new(args.get(2).expect("cache DIR"))),
        _ => {}
    }
    let list = args
        .get(1)
        .cloned()
        .or_else(|| std::env::var("SIZES").ok())
        .unwrap_or_else(|| "1m,10m".into());
    let sizes = sizes::parse_list(&list).unwrap_or_else(|e| panic!("{e}"));
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/data");
    let me = std::env::current_exe().expect("the path of this binary");

    // `permd serve` on an empty snapshot: what the serve rows subtract.
    let empty = data.join("snapshot-empty.yaml");
    std::fs::create_dir_all(&data).expect("bench/data can be created");
    std::fs::write(&empty, "format: 1\nversion: 1\n").expect("the empty snapshot can be written");
    let empty_kb = serve_rss_kb(&empty);
    let mut serve_rows = Vec::new();
    let mut rows = Vec::new();
    for (name, n) in &sizes {
        let path = ensure_snapshot(&data, name, *n);
        let size_mb = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;
        let line = child(&me, &["measure".as_ref(), path.as_os_str()], "MEASURED ");
        let streamed = child(&me, &["stream".as_ref(), path.as_os_str()], "STREAMED ");
        if let (Some(empty_kb), Some(kb)) = (empty_kb, serve_rss_kb(&path)) {
            eprintln!("[scale] {name}: permd serve VmRSS {kb} kB, empty snapshot {empty_kb} kB");
            serve_rows.push((name.clone(), num(&line, "assignments"), empty_kb, kb));
        }
        // The cache file of the same snapshot (`sync::Cache`), written once and kept beside it.
        let dir = data.join(format!("cache-{name}"));
        if !cache_is_current(&dir) {
            child(
                &me,
                &["write-cache".as_ref(), path.as_os_str(), dir.as_os_str()],
                "WROTE ",
            );
        }
        let cached = child(&me, &["cache".as_ref(), dir.as_os_str()], "CACHED ");
        rows.push((name.clone(), size_mb, line, cached, streamed));
    }

    let mib = |kb: f64| kb / 1024.0;
    println!();
    println!("scale: fresh child process per size; RSS after the document is dropped, only the index left;");
    println!("B/assignment = (RSS - the child's RSS before loading) / role assignments (the whole index: users,");
    println!("resources, orgs and grants too); peak = VmHWM (bytes + document + index at once); validate and");
    println!("build run side by side (v ∥ b = their wall time); load = read + decode + v ∥ b; warm = a fresh");
    println!("child's `Cache::load_index` of the same snapshot (read, SHA-256, the index image read back and");
    println!("checked), peak its VmHWM; cache MB = the cache file");
    println!();
    println!(
        "{:<5} {:>11} {:>9} {:>7} {:>7} {:>9} {:>7} {:>7} {:>7} {:>9} {:>9} {:>7} {:>7} {:>10} {:>9}",
        "size",
        "assignments",
        "file MB",
        "read",
        "decode",
        "validate",
        "build",
        "v ∥ b",
        "load",
        "RSS MiB",
        "peak MiB",
        "B/asgn",
        "warm",
        "warm peak",
        "cache MB"
    );
    for (name, size_mb, l, c, _) in &rows {
        let n = num(l, "assignments");
        let per = (num(l, "rss_kb") - num(l, "baseline_kb")) * 1024.0 / n;
        let s = |k: &str| format!("{:.2}s", num(l, k));
        println!(
            "{name:<5} {n:>11.0} {size_mb:>9.1} {:>7} {:>7} {:>9} {:>7} {:>7} {:>7} {:>9.0} {:>9.0} {per:>7.0} {:>7} {:>10.0} {:>9.1}",
            s("read_s"),
            s("decode_s"),
            s("validate_s"),
            s("build_s"),
            s("both_s"),
            s("total_s"),
            mib(num(l, "rss_kb")),
            mib(num(l, "hwm_kb")),
            format!("{:.2}s", num(c, "load_s")),
            mib(num(c, "hwm_kb")),
            num(c, "file_bytes") / 1e6,
        );
    }
    println!();
    for (name, _, l, c, st) in &rows {
        let n = num(l, "assignments");
        let build = num(l, "build_s");
        let rss = num(l, "rss_kb") * 1024.0;
        let per = (num(l, "rss_kb") - num(l, "baseline_kb")) * 1024.0 / n;
        let ten_m = name == "10m";
        let goal = |g: &str| if ten_m { g.to_owned() } else { String::new() };
        let ok = |b: bool| if ten_m { met(b) } else { "" };
        println!(
            "TABLE|scale {name}|Index::build (beside validation)|{build:.2} s|{}|{}",
            goal("≤ 5 s"),
            ok(build <= 5.0)
        );
        let load = num(st, "total_s");
        println!(
            "TABLE|scale {name}|load from MessagePack, bytes to serving (Index::from_msgpack from the file)|{load:.2} s|{}|{}",
            goal("≤ 4 s"),
            ok(load <= 4.0)
        );
        println!(
            "TABLE|scale {name}|load the reference way (read + decode + validate ∥ build)|{:.2} s (decode {:.2}, validate ∥ build {:.2})||",
            num(l, "total_s"),
            num(l, "decode_s"),
            num(l, "both_s"),
        );
        let warm = num(c, "load_s");
        println!(
            "TABLE|scale {name}|warm start from the cache (Cache::load_index, the index image of {:.0} MB)|{warm:.2} s|{}|{}",
            num(c, "file_bytes") / 1e6,
            goal("≤ 1.5 s"),
            ok(warm <= 1.5)
        );
        println!(
            "TABLE|scale {name}|resident memory, index only|{:.0} MiB|{}|{}",
            rss / 1048576.0,
            goal("≤ 1.5 GB"),
            ok(rss <= 1.5e9)
        );
        println!(
            "TABLE|scale {name}|resident bytes per role assignment|{per:.0} B|{}|{}",
            goal("≤ 100 B"),
            ok(per <= 100.0)
        );
        let hwm = num(st, "hwm_kb");
        println!(
            "TABLE|scale {name}|peak resident (VmHWM) during the load / resident|{:.0} MiB ({:.2}×)|{}|{}",
            mib(hwm),
            hwm / num(st, "rss_kb"),
            goal("≤ 1.5×"),
            ok(hwm <= 1.5 * num(st, "rss_kb"))
        );
        let hwm = num(l, "hwm_kb");
        println!(
            "TABLE|scale {name}|peak resident, the reference way / resident|{:.0} MiB ({:.2}×)||",
            mib(hwm),
            hwm / num(l, "rss_kb"),
        );
    }
    for (name, n, empty_kb, kb) in &serve_rows {
        let per = (*kb as f64 - *empty_kb as f64) * 1024.0 / n;
        let goal = name == "10m" || name == "tail2m";
        println!(
            "TABLE|scale {name}|permd serve VmRSS over an empty snapshot, per role assignment|{per:.0} B ({:.0} − {:.0} MiB)|{}|{}",
            *kb as f64 / 1024.0,
            *empty_kb as f64 / 1024.0,
            if goal { "≤ 48 B" } else { "" },
            if goal { met(per <= 48.0) } else { "" }
        );
    }
}
