use permd::index::Index;
use permd::model::{Encoding, Snapshot, validate};
use std::time::Instant;
fn main() {
    let path = std::env::args()
        .nth(1)
        .unwrap_or("bench/data/snapshot-1m.msgpack".into());
    let t = Instant::now();
    let bytes = std::fs::read(&path).unwrap();
    println!("read {:?} {} bytes", t.elapsed(), bytes.len());
    let t = Instant::now();
    let d = ring::digest::digest(&ring::digest::SHA256, &bytes);
    println!("sha {:?} {:?}", t.elapsed(), &d.as_ref()[..2]);
    let t = Instant::now();
    let s = Snapshot::decode(&bytes, Encoding::MessagePack).unwrap();
    println!("decode {:?}", t.elapsed());
    let t = Instant::now();
    validate(&s).unwrap();
    println!("validate {:?}", t.elapsed());
    let t = Instant::now();
    let ix = Index::build(&s);
    println!("build {:?} v{}", t.elapsed(), ix.version());
    let t = Instant::now();
    drop(s);
    println!("drop doc {:?}", t.elapsed());
    let st = std::fs::read_to_string("/proc/self/status").unwrap();
    for l in st.lines().filter(|l| l.starts_with("VmRSS") || l.starts_with("VmHWM")) {
        println!("{l}");
    }
}
// (appended) keep the index alive until RSS is read
