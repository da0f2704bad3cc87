//! Writes the `/allowed` bodies bench/http.sh sends: the same seeded mix of checks as the
//! `decide/mix_1024` criterion bench, drawn from the real users, documents and folders of a
//! snapshot file, one JSON body per line. Also prints how permd decides them, from the file.
//! With CERBOS_OUT_FILE, also writes the same checks, line for line, as Cerbos
//! `/api/check/resources` bodies: the principal carries the roles permd would find itself for
//! that check (see `cerbos_roles`), since Cerbos is handed the roles in the request.
//!
//! Usage: `bodies SNAPSHOT_FILE OUT_FILE [COUNT [CERBOS_OUT_FILE]]` (COUNT defaults to 1024).

#[path = "picks.rs"]
mod picks;

use permd::index::Index;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::Path;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(snapshot), Some(out)) = (args.first(), args.get(1)) else {
        anyhow::bail!("usage: bodies SNAPSHOT_FILE OUT_FILE [COUNT [CERBOS_OUT_FILE]]");
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
    if let Some(cerbos_out) = args.get(3) {
        let parents: HashMap<&str, &str> = s
            .orgs
            .iter()
            .filter_map(|o| Some((o.key.as_str(), o.parent.as_deref()?)))
            .collect();
        let mut file = std::io::BufWriter::new(std::fs::File::create(cerbos_out)?);
        let mut without_roles = 0usize;
        for (i, q) in mix.iter().enumerate() {
            let roles = cerbos_roles(&shape, &parents, q);
            if roles.is_empty() {
                without_roles += 1;
            }
            writeln!(file, "{}", cerbos_body(i, q, roles))?;
        }
        file.flush()?;
        println!(
            "wrote {} Cerbos bodies to {cerbos_out} ({without_roles} with no relevant role, sent as `{NO_ROLE}`)",
            mix.len()
        );
    }
    let summary: Vec<String> = reasons.iter().map(|(r, n)| format!("{r}={n}")).collect();
    println!("wrote {} bodies to {out}: {}", mix.len(), summary.join(" "));
    Ok(())
}

/// Cerbos rejects a principal without roles; a user holding none that matter for a check gets
/// this one, which no Cerbos policy names (so it is denied, as permd denies).
const NO_ROLE: &str = "none";

/// The roles permd itself would find for check `q` (§2 steps 4 and 5 of the model spec), from
/// the snapshot: the user's org-wide assignments in the check's org and its ancestor orgs, and
/// the user's instance assignments on the resource or any folder above it (in its org), as
/// assigned (not expanded: the Cerbos policies expand `extends`). Sorted, without repeats.
fn cerbos_roles<'a>(
    shape: &'a picks::Shape,
    parents: &HashMap<&str, &str>,
    q: &picks::OwnedQuery,
) -> BTreeSet<&'a str> {
    let mut roles = BTreeSet::new();
    let res = q.key.as_deref().and_then(|k| shape.res.get(k));
    // Org resolution as in the spec: the request's org, else the instance's, else `default`.
    let org = q.org.as_deref().or(res.map(|r| r.0.as_str())).unwrap_or("default");
    // A tenant mismatch is denied before any role counts.
    if res.is_some_and(|r| r.0 != org) {
        return roles;
    }
    let mut orgs = vec![org];
    while let Some(&p) = orgs.last().and_then(|o| parents.get(o)) {
        if orgs.contains(&p) {
            break; // a cycle: every org on it is in already
        }
        orgs.push(p);
    }
    for (o, role) in shape.org_roles.get(&q.user).into_iter().flatten() {
        if orgs.contains(&o.as_str()) {
            roles.insert(role.as_str());
        }
    }
    if let (Some(key), Some(_)) = (q.key.as_deref(), res) {
        let mut chain = vec![key];
        chain.extend(shape.ancestors(key));
        for node in chain {
            for (u, role, o) in shape.holders.get(node).into_iter().flatten() {
                if *u == q.user && o == org {
                    roles.insert(role.as_str());
                }
            }
        }
    }
    roles
}

/// The Cerbos `/api/check/resources` body of check number `i`.
fn cerbos_body(i: usize, q: &picks::OwnedQuery, roles: BTreeSet<&str>) -> serde_json::Value {
    let roles: Vec<&str> = if roles.is_empty() {
        vec![NO_ROLE]
    } else {
        roles.into_iter().collect()
    };
    serde_json::json!({
        "requestId": format!("c{i}"),
        "principal": { "id": q.user, "roles": roles, "attr": {} },
        "resources": [{
            "resource": { "kind": q.resource_type, "id": q.key.as_deref().unwrap_or("*"), "attr": {} },
            "actions": [q.action],
        }],
    })
}
