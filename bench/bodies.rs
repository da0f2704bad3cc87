//! Writes the `/allowed` bodies bench/http.sh sends: the same seeded mix of checks as the
//! `decide/mix_1024` criterion bench, drawn from the real users, documents and folders of a
//! snapshot file, one JSON body per line. Also prints how permd decides them, from the file.
//!
//! Usage: `bodies SNAPSHOT_FILE OUT_FILE [COUNT]` (COUNT defaults to 1024).

#[path = "picks.rs"]
mod picks;

use permd::index::Index;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(snapshot), Some(out)) = (args.first(), args.get(1)) else {
        anyhow::bail!("usage: bodies SNAPSHOT_FILE OUT_FILE [COUNT]");
    };
    let count: usize = match args.get(2) {
        Some(n) => n.parse().map_err(|e| anyhow::anyhow!("COUNT `{n}`: {e}"))?,
        None => 1024,
    };
    let s = permd::cli::read_snapshot(Path::new(snapshot)).map_err(anyhow::Error::msg)?;
    let shape = picks::Shape::new(&s);
    let mix = shape.mix(&s, count);
    let ix = Index::build(&s);
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    let mut file = std::io::BufWriter::new(std::fs::File::create(out)?);
    for q in &mix {
        *reasons.entry(ix.decide(&q.query()).reason.as_str()).or_default() += 1;
        writeln!(file, "{}", q.allowed_body())?;
    }
    file.flush()?;
    let summary: Vec<String> = reasons.iter().map(|(r, n)| format!("{r}={n}")).collect();
    println!("wrote {} bodies to {out}: {}", mix.len(), summary.join(" "));
    Ok(())
}
