//! Where the index's memory goes: live heap bytes (what the allocator was asked for and not
//! given back) against resident memory, after loading a snapshot file and dropping the document.
//! `cargo run --release --example heap -- bench/data/snapshot-1m.msgpack`
#![allow(clippy::expect_used, clippy::panic)]

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static COUNT: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to jemalloc unchanged; only counts.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        COUNT.fetch_add(1, Ordering::Relaxed);
        unsafe { tikv_jemallocator::Jemalloc.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        COUNT.fetch_sub(1, Ordering::Relaxed);
        unsafe { tikv_jemallocator::Jemalloc.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n, Ordering::Relaxed);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { tikv_jemallocator::Jemalloc.realloc(p, l, n) }
    }
}
#[global_allocator]
static A: Counting = Counting;

fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("rss")
}

fn main() {
    let file = std::env::args().nth(1).expect("FILE");
    let base = (LIVE.load(Ordering::Relaxed), rss());
    let bytes = std::fs::read(&file).expect("read");
    let s = permd::model::Snapshot::decode(&bytes, permd::model::Encoding::MessagePack).expect("decode");
    drop(bytes);
    let doc = LIVE.load(Ordering::Relaxed);
    let ix = permd::index::Index::build(&s);
    let n = s.role_assignments.len() as f64;
    let users: std::collections::HashSet<&str> = s.role_assignments.iter().map(|a| a.user.as_str()).collect();
    let inst = s.role_assignments.iter().filter(|a| a.resource.is_some()).count();
    let held: std::collections::HashSet<&str> = s
        .role_assignments
        .iter()
        .filter_map(|a| a.resource.as_deref())
        .collect();
    println!(
        "users {}, on instances {inst}, resources holding them {}",
        users.len(),
        held.len()
    );
    drop((users, held));
    let with = LIVE.load(Ordering::Relaxed);
    drop(s);
    std::thread::sleep(std::time::Duration::from_secs(12));
    let live = LIVE.load(Ordering::Relaxed) - base.0;
    let r = rss() - base.1;
    println!(
        "document {:.0} MB; index live heap {:.1} MB = {:.1} B/asg in {} allocations; RSS over base {:.1} MB = {:.1} B/asg; doc+index {:.0} MB",
        (doc - base.0) as f64 / 1e6,
        live as f64 / 1e6,
        live as f64 / n,
        COUNT.load(Ordering::Relaxed),
        r as f64 * 1024.0 / 1e6,
        r as f64 * 1024.0 / n,
        with as f64 / 1e6
    );
    println!("{:?}", ix.counts());
}

/// jemalloc's settings as the permd binary has them (src/lib.rs).
#[allow(unsafe_code, non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8; 64] = permd::JEMALLOC_CONF;
