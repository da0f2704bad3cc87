//! Replays the fuzz seed corpus (`fuzz/corpus/<target>/`) and every crash found so far
//! (`fuzz/regressions/<target>/`) through the fuzz targets' checks, on stable, in
//! `cargo test`: each must pass, so a fixed crash stays fixed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use permd::fuzzing::{self, Violation};
use permd::model::{Encoding, Snapshot};
use std::path::{Path, PathBuf};

/// The files of `fuzz/<dir>/<target>/`, sorted; none when the directory does not exist.
fn files(dir: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(dir)
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    out.sort();
    out
}

fn replay(target: &str, check: fn(&[u8]) -> Result<(), Violation>) -> usize {
    let seeds = files("corpus", target);
    assert!(!seeds.is_empty(), "no seeds for `{target}`");
    let all: Vec<PathBuf> = seeds.into_iter().chain(files("regressions", target)).collect();
    for path in &all {
        let data = std::fs::read(path).unwrap();
        if let Err(v) = check(&data) {
            panic!("{}: {v}", path.display());
        }
    }
    all.len()
}

fn is_bad(path: &Path) -> bool {
    path.file_name().unwrap().to_string_lossy().starts_with("bad-")
}

#[test]
fn snapshot_corpus() {
    replay("snapshot", fuzzing::snapshot);
    // The seeds mean something: each good one is a valid document in its encoding.
    for path in files("corpus", "snapshot") {
        let name = path.to_string_lossy();
        let encoding = Encoding::from_path(&name).unwrap();
        let loaded = Snapshot::load(&std::fs::read(&path).unwrap(), encoding);
        assert_eq!(loaded.is_err(), is_bad(&path), "{name}: {loaded:?}");
    }
}

#[test]
fn delta_corpus() {
    replay("delta", fuzzing::delta);
    // Each good seed applies at least one batch; the bad ones none.
    for path in files("corpus", "delta") {
        let applied = fuzzing::delta_applied(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            applied == 0,
            is_bad(&path),
            "{}: {applied} batches applied",
            path.display()
        );
    }
}

#[test]
fn http_bodies_corpus() {
    replay("http_bodies", fuzzing::http_bodies);
    // Each good seed is a request its route answers with 200; the bad ones are refused.
    let mut wrong = Vec::new();
    for path in files("corpus", "http_bodies") {
        let (status, body) = fuzzing::http_answer(&std::fs::read(&path).unwrap()).unwrap().unwrap();
        if (status == 200) == is_bad(&path) {
            wrong.push(format!("{}: {status} {body}", path.display()));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn ndjson_corpus() {
    replay("ndjson", fuzzing::ndjson);
}

#[test]
fn the_example_snapshot_is_a_seed() {
    let seed = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/snapshot/example.yaml"))
        .unwrap();
    assert_eq!(seed, fuzzing::EXAMPLE_SNAPSHOT);
}

#[test]
fn condition_corpus() {
    replay("condition", fuzzing::condition);
    // The seeds mean something: the good ones compile, the `bad-` ones are refused.
    for path in files("corpus", "condition") {
        let data = std::fs::read(&path).unwrap();
        let text = String::from_utf8(data).unwrap();
        let expr = text.split("\n%%\n").next().unwrap();
        let compiled = permd::cond::Condition::compile(expr);
        assert_eq!(compiled.is_err(), is_bad(&path), "{}: {compiled:?}", path.display());
    }
}

/// The documents whose index images seed the `image` target: the good `snapshot` seeds.
fn image_seed_sources() -> Vec<(String, Snapshot)> {
    files("corpus", "snapshot")
        .into_iter()
        .filter(|p| !is_bad(p))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let doc = Snapshot::load(&std::fs::read(&p).unwrap(), Encoding::from_path(&name).unwrap()).unwrap();
            (name, doc)
        })
        .collect()
}

#[test]
fn image_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/image");
    // An image's layout changes now and then: `PERMD_WRITE_IMAGE_SEEDS=1 cargo test --test
    // fuzz_corpus image_corpus` writes the seeds again from the snapshot seeds.
    if std::env::var_os("PERMD_WRITE_IMAGE_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, doc) in image_seed_sources() {
            std::fs::write(dir.join(format!("{name}.image")), fuzzing::image_seed(&doc).unwrap()).unwrap();
        }
    }
    replay("image", fuzzing::image);
    // The seeds are this build's images of the snapshot seeds, so they reach past the checks.
    for (name, doc) in image_seed_sources() {
        let seed = std::fs::read(dir.join(format!("{name}.image"))).unwrap();
        assert!(
            seed == fuzzing::image_seed(&doc).unwrap(),
            "fuzz/corpus/image/{name}.image is not this build's image of {name}: the image changed, so \
             bump IMAGE_LAYOUT (src/index/image.rs: a cache written before must not be read as this \
             layout) and write the seeds again (PERMD_WRITE_IMAGE_SEEDS=1 cargo test --test fuzz_corpus \
             image_corpus)"
        );
    }
}
