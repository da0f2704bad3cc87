//! Shared by bench/scale.rs and bench/casbin.rs (included with `#[path]`): the named snapshot
//! sizes (`1k`, `100k`, `1m`, `10m` role assignments) and the generator parameters of each.
//! `1m` is `Params::default()`; the others keep its ratios (a tenth as many users and resources
//! as assignments, one grant per thousand), with between 10 and 100 orgs.

// Each includer uses part of this module; what one leaves unused is not dead.
#![allow(dead_code)]

use permd::model::generate::{Params, Shape};

/// A size name and its role-assignment count, or `None` for a name not in the list.
pub fn assignments(name: &str) -> Option<usize> {
    match name {
        "1k" => Some(1_000),
        "100k" => Some(100_000),
        "1m" => Some(1_000_000),
        "10m" => Some(10_000_000),
        "tail2m" => Some(2_000_000),
        _ => None,
    }
}

/// The generator parameters of a size: `Params::default()` scaled to `assignments`.
pub fn params(assignments: usize) -> Params {
    let d = Params::default();
    let scale = |n: usize| (n as u128 * assignments as u128 / d.assignments as u128) as usize;
    let resources = scale(d.resources).max(10);
    Params {
        users: scale(d.users).max(10),
        assignments,
        resources,
        // 100 orgs at 1M and 10M (as the sizes have it); fewer below so every org
        // still has about a hundred resources, but never fewer than ten.
        orgs: (resources / 100).clamp(10, d.orgs),
        grants: scale(d.grants).max(10),
        ..d
    }
}

/// The generator parameters of a named size: `tail2m` is the second shape (2M assignments
/// over 600k user ids drawn with a long tail, most users holding one to three and a few
/// holding thousands; 300 orgs, 200k resources, a fifth of assignments on instances, as in
/// every size); any other name is `params(n)`.
pub fn params_of(name: &str, n: usize) -> Params {
    if name != "tail2m" {
        return params(n);
    }
    Params {
        users: 600_000,
        assignments: n,
        resources: 200_000,
        orgs: 300,
        grants: 2_000,
        shape: Shape::Tail,
        ..Params::default()
    }
}

/// Parses a comma-separated list of size names.
pub fn parse_list(list: &str) -> Result<Vec<(String, usize)>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let name = s.to_ascii_lowercase();
            assignments(&name)
                .map(|n| (name, n))
                .ok_or_else(|| format!("unknown size `{s}`: one of 1k, 100k, 1m, 10m, tail2m"))
        })
        .collect()
}
