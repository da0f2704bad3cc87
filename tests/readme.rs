//! The README's walkthrough replayed against a real permd: every `$ curl` line of a console
//! block is sent as the request it describes, and the answer must equal the line printed
//! under it (less `age_seconds`, which is a clock reading).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Permd;
use serde_json::Value;

/// Splits a shell line into words, honouring single quotes (all the README uses).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                any = true;
            }
            ' ' if !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

fn without_age(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("age_seconds");
    }
    v
}

#[test]
fn walkthrough_answers_are_true() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let p = Permd::repo_default();
    p.ready();
    let lines: Vec<&str> = readme.lines().collect();
    let mut replayed = 0;
    for (i, line) in lines.iter().enumerate() {
        let Some(cmd) = line.strip_prefix("$ curl ") else {
            continue;
        };
        let w = words(cmd);
        let url = w
            .iter()
            .find(|x| x.starts_with("localhost:7766"))
            .expect("a localhost:7766 URL");
        let path = url.trim_start_matches("localhost:7766");
        let body = w.iter().position(|x| x == "-d").and_then(|at| w.get(at + 1));
        let (status, answer) = match body {
            Some(b) => p.request("POST", path, &[("content-type", "application/json")], b.as_bytes()),
            None => p.get(path),
        };
        let printed: Value = serde_json::from_str(lines[i + 1]).expect("the line after a curl call is its JSON answer");
        assert!(
            status == 200 || printed.get("error").is_some(),
            "{line}: status {status}"
        );
        assert_eq!(
            without_age(answer),
            without_age(printed),
            "README line {}: {line}",
            i + 1
        );
        replayed += 1;
    }
    assert!(replayed >= 10, "only {replayed} curl calls found in the README");
}
