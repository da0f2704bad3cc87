//! The built index written out as it is and read back: the cache's warm start
//! (`sync/cache.rs`) loads an image instead of decoding, validating and building a document.
//! No file access here: the caller hands bytes in and takes bytes out.
//!
//! What an image holds, in this order (integers little-endian; a list is its length as a u64
//! and then its elements):
//! - `PERMDIX\0`, the format number, the layout number and the crate's version: an image of
//!   another build is refused whole ([`ImageError::OtherBuild`]), never read in part;
//! - the version;
//! - the five interners' names (orgs, types, actions, roles, users), each packed as one text
//!   and the end of each name in it;
//! - the resources: their keys (packed the same way), and per resource id its type, org and
//!   only parent; the parents of those with several;
//! - the users table as it is: per user its slot (run ends, instance org mask, listed, pads),
//!   per page the length of its two arrays, then every page's org-wide and instance entries;
//! - the small parts in MessagePack (rmp-serde): the policy items, URL mappings, the user
//!   items that say more than a key, resources' attributes and the grants (conditions as
//!   their text).
//!
//! Large arrays are read as raw arrays (a copy, no decoding per element). What is derived
//! from those tables is made again on load rather than stored, so it cannot disagree with
//! them: the key → id hash tables (their hasher is seeded per process), the spans
//! (`spans.rs`), the bitmaps (users per (org, role), instances per (org, type)), the instance
//! holders per resource, the grant kinds per org, the counts, the compiled policy, URL rules
//! and conditions (through `cond`'s process-wide cache). Per-version caches (`query_aux`,
//! `ignored`, `cond_holds`) start empty as after any build.
//!
//! An image is checked, never trusted: every id read is in range for its table, every run lies
//! within its array and is sorted where the index relies on it, names are unique in their
//! namespace, and anything short, long or malformed is an [`ImageError`] naming the part.
//! Reading one never panics and never gives an index that could panic later.

use super::paged::{KeyMap, NameList};
use super::users::{PER, Slot, UserTable, bounds};
use super::*;
use serde::Deserialize;
use std::collections::HashMap;

const MAGIC: &[u8; 8] = b"PERMDIX\0";
/// The image format; a reader refuses any other.
pub const IMAGE_FORMAT: u32 = 1;
/// Bumped whenever the layout of an image or the meaning of what it holds changes, even
/// within one format (with the crate version, which a release bumps anyway).
pub const IMAGE_LAYOUT: u32 = 1;

/// Why an image was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("not an index image (bad magic)")]
    NotAnImage,
    #[error(
        "index image of another build (format {format}, layout {layout}, permd `{crate_version}`; \
         this one reads format {IMAGE_FORMAT}, layout {IMAGE_LAYOUT}, permd `{}`)",
        env!("CARGO_PKG_VERSION")
    )]
    OtherBuild {
        format: u32,
        layout: u32,
        crate_version: String,
    },
    #[error("index image: `{part}` is cut short")]
    Truncated { part: &'static str },
    #[error("index image: `{part}`: {problem}")]
    Invalid { part: &'static str, problem: String },
    #[error("index image: cannot write `{part}`: {problem}")]
    Write { part: &'static str, problem: String },
}

fn invalid(part: &'static str, problem: impl Into<String>) -> ImageError {
    ImageError::Invalid {
        part,
        problem: problem.into(),
    }
}

/// A grant as the image holds it: resource, org, role-name, patterns and condition text.
#[derive(Serialize, Deserialize)]
struct GrantImage {
    res: u32,
    org: u32,
    role: u32,
    patterns: Vec<(u32, u32)>,
    when: Option<String>,
}

#[derive(Serialize)]
struct SmallRef<'a> {
    orgs: &'a [crate::model::Org],
    resource_types: &'a [crate::model::ResourceType],
    roles: &'a [Role],
    menus: &'a [crate::model::Menu],
    rules: &'a [crate::model::Rule],
    url_mappings: &'a [crate::model::UrlMapping],
    user_meta: Vec<(u32, &'a User)>,
    attributes: Vec<(u32, &'a Attributes)>,
    grants: Vec<GrantImage>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Small {
    orgs: Vec<crate::model::Org>,
    resource_types: Vec<crate::model::ResourceType>,
    roles: Vec<Role>,
    menus: Vec<crate::model::Menu>,
    rules: Vec<crate::model::Rule>,
    url_mappings: Vec<crate::model::UrlMapping>,
    user_meta: Vec<(u32, User)>,
    attributes: Vec<(u32, Attributes)>,
    grants: Vec<GrantImage>,
}

// ---------------------------------------------------------------------------------------
// Writing

/// What an image of this build starts with: the magic, format, layout and crate version.
pub(crate) fn header() -> Vec<u8> {
    let crate_version = env!("CARGO_PKG_VERSION");
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&IMAGE_FORMAT.to_le_bytes());
    out.extend_from_slice(&IMAGE_LAYOUT.to_le_bytes());
    out.extend_from_slice(&(crate_version.len() as u32).to_le_bytes());
    out.extend_from_slice(crate_version.as_bytes());
    out
}

struct Out<'a>(&'a mut Vec<u8>);

impl Out<'_> {
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn len(&mut self, n: usize) {
        self.u64(n as u64);
    }
    fn u32s(&mut self, values: impl ExactSizeIterator<Item = u32>) {
        self.len(values.len());
        self.0.reserve(values.len() * 4);
        for v in values {
            self.u32(v);
        }
    }
    /// A name list: the count, the packed text, the end of each name.
    fn names(&mut self, part: &'static str, names: &NameList) -> Result<(), ImageError> {
        let n = names.len();
        let text_len: usize = (0..n as u32).map(|i| names.name(i).len()).sum();
        if text_len > u32::MAX as usize {
            return Err(ImageError::Write {
                part,
                problem: format!("{text_len} bytes of names, more than a u32 end can say"),
            });
        }
        self.len(n);
        self.len(text_len);
        self.0.reserve(text_len + n * 4);
        for i in 0..n as u32 {
            self.0.extend_from_slice(names.name(i).as_bytes());
        }
        let mut end = 0u32;
        for i in 0..n as u32 {
            end += names.name(i).len() as u32;
            self.u32(end);
        }
        Ok(())
    }
}

impl Index {
    /// Appends this index's image to `out` (see the module's comment); [`Index::read_image`]
    /// reads it back.
    pub fn write_image(&self, out: &mut Vec<u8>) -> Result<(), ImageError> {
        let mut o = Out(out);
        o.0.extend_from_slice(&header());
        o.u64(self.version);

        let n = &self.names;
        o.names("orgs", n.orgs.names())?;
        o.names("types", n.types.names())?;
        o.names("actions", n.actions.names())?;
        o.names("roles", n.roles.names())?;
        o.names("users", n.users.names())?;

        // Resources.
        o.names("resource keys", &self.res_names)?;
        o.len(self.res_hot.len());
        o.0.reserve(self.res_hot.len() * 12);
        for h in self.res_hot.iter() {
            o.u32(h.resource_type);
            o.u32(h.org);
            o.u32(h.parent);
        }
        let many: Vec<(u32, &[u32])> = (0..self.res_count())
            .filter(|&id| self.res_hot.get(id as usize).is_some_and(|h| h.parent == ResHot::MANY))
            .map(|id| (id, self.res_extra(id).map_or(&[][..], |e| &e.parents[..])))
            .collect();
        o.u32s(many.iter().map(|&(id, _)| id));
        let mut end = 0u32;
        o.u32s(many.iter().map(|&(_, p)| {
            end += p.len() as u32;
            end
        }));
        let flat: Vec<u32> = many.iter().flat_map(|&(_, p)| p.iter().copied()).collect();
        o.u32s(flat.into_iter());

        // The users table, as it is.
        let t = &self.users;
        o.len(t.len);
        o.0.reserve(t.len * 16);
        for (p, slots) in t.slots.iter().enumerate() {
            let in_page = t.len.saturating_sub(p * PER).min(PER);
            for s in slots.iter().take(in_page) {
                o.u32(s.org_end);
                o.u32(s.inst_end);
                o.u32(s.inst_orgs);
                o.u32(u32::from(s.listed) | u32::from(s.org_pad) << 8 | u32::from(s.inst_pad) << 16);
            }
        }
        o.u32s(t.org.iter().map(|a| a.len() as u32));
        o.u32s(t.inst.iter().map(|a| a.len() as u32));
        let org_total: usize = t.org.iter().map(|a| a.len()).sum();
        o.len(org_total);
        o.0.reserve(org_total * 8);
        for &(org, role) in t.org.iter().flat_map(|a| a.iter()) {
            o.u32(org);
            o.u32(role);
        }
        let inst_total: usize = t.inst.iter().map(|a| a.len()).sum();
        o.len(inst_total);
        o.0.reserve(inst_total * 12);
        for &(res, org, role) in t.inst.iter().flat_map(|a| a.iter()) {
            o.u32(res);
            o.u32(org);
            o.u32(role);
        }

        // The small parts.
        let mut user_meta: Vec<(u32, &User)> = self.user_meta.iter().map(|(&id, u)| (id, &**u)).collect();
        user_meta.sort_unstable_by_key(|&(id, _)| id);
        let mut attributes = Vec::new();
        let mut grants = Vec::new();
        for (id, extra) in self.res_extra.iter().enumerate() {
            let Some(extra) = extra else { continue };
            if let Some(a) = &extra.attributes {
                attributes.push((id as u32, &**a));
            }
            for g in &extra.grants {
                grants.push(GrantImage {
                    res: id as u32,
                    org: g.org,
                    role: g.role,
                    patterns: g.patterns.to_vec(),
                    when: g.when.as_ref().map(|c| c.source().to_owned()),
                });
            }
        }
        let items = &self.items;
        let small = SmallRef {
            orgs: &items.orgs,
            resource_types: &items.resource_types,
            roles: &items.roles,
            menus: &items.menus,
            rules: &items.rules,
            url_mappings: &self.urls.items,
            user_meta,
            attributes,
            grants,
        };
        let bytes = rmp_serde::to_vec_named(&small).map_err(|e| ImageError::Write {
            part: "policy items",
            problem: e.to_string(),
        })?;
        o.len(bytes.len());
        o.0.extend_from_slice(&bytes);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Reading

struct In<'a> {
    bytes: &'a [u8],
}

impl<'a> In<'a> {
    fn take(&mut self, n: usize, part: &'static str) -> Result<&'a [u8], ImageError> {
        if n > self.bytes.len() {
            return Err(ImageError::Truncated { part });
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self, part: &'static str) -> Result<[u8; N], ImageError> {
        let b = self.take(N, part)?;
        <[u8; N]>::try_from(b).map_err(|_| ImageError::Truncated { part })
    }
    fn u32(&mut self, part: &'static str) -> Result<u32, ImageError> {
        Ok(u32::from_le_bytes(self.array(part)?))
    }
    fn u64(&mut self, part: &'static str) -> Result<u64, ImageError> {
        Ok(u64::from_le_bytes(self.array(part)?))
    }
    /// A list's length, for elements of `size` bytes: never more than the bytes left could
    /// hold, so nothing is allocated for a length the input does not back.
    fn len(&mut self, size: usize, part: &'static str) -> Result<usize, ImageError> {
        let n = self.u64(part)?;
        match usize::try_from(n).ok().and_then(|n| n.checked_mul(size.max(1))) {
            Some(bytes) if bytes <= self.bytes.len() => Ok(n as usize),
            _ => Err(ImageError::Truncated { part }),
        }
    }
    /// A list of `size`-byte elements, its raw bytes.
    fn list<const N: usize>(&mut self, part: &'static str) -> Result<&'a [[u8; N]], ImageError> {
        let n = self.len(N, part)?;
        let (chunks, rest) = self.take(n * N, part)?.as_chunks::<N>();
        if !rest.is_empty() {
            return Err(ImageError::Truncated { part });
        }
        Ok(chunks)
    }
    fn u32s(&mut self, part: &'static str) -> Result<Vec<u32>, ImageError> {
        Ok(self.list::<4>(part)?.iter().map(|&c| u32::from_le_bytes(c)).collect())
    }
    fn names(&mut self, part: &'static str) -> Result<NameList, ImageError> {
        let n = self.len(4, part)?;
        let text_len = self.len(1, part)?;
        let text = self.take(text_len, part)?;
        let text = std::str::from_utf8(text).map_err(|e| invalid(part, format!("not UTF-8: {e}")))?;
        let ends = self.take(n * 4, part)?.as_chunks::<4>().0;
        let ends: Vec<u32> = ends.iter().map(|&c| u32::from_le_bytes(c)).collect();
        NameList::from_packed(text.to_owned(), ends).map_err(|e| invalid(part, e))
    }
}

#[inline]
fn u32_at(c: &[u8], at: usize) -> u32 {
    c.get(at..at + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, u32::from_le_bytes)
}

/// What the users table reading found, for the checks and the derived parts.
struct UsersRead {
    table: UserTable,
    listed: usize,
    assignments: usize,
}

impl Index {
    /// An index from an image [`Index::write_image`] wrote, checked throughout (see the
    /// module's comment); the error names the part that is wrong.
    pub fn read_image(bytes: &[u8]) -> Result<Index, ImageError> {
        let mut r = In { bytes };
        if r.take(8, "header").map_err(|_| ImageError::NotAnImage)? != MAGIC {
            return Err(ImageError::NotAnImage);
        }
        let format = r.u32("header")?;
        let layout = r.u32("header")?;
        let n = r.u32("header")? as usize;
        let crate_version = String::from_utf8_lossy(r.take(n, "header")?).into_owned();
        if format != IMAGE_FORMAT || layout != IMAGE_LAYOUT || crate_version != env!("CARGO_PKG_VERSION") {
            return Err(ImageError::OtherBuild {
                format,
                layout,
                crate_version,
            });
        }
        let mut ix = Index::empty(r.u64("version")?);

        let orgs = interner(r.names("orgs")?, "orgs")?;
        let types = interner(r.names("types")?, "types")?;
        let actions = interner(r.names("actions")?, "actions")?;
        let roles = interner(r.names("roles")?, "roles")?;
        let user_names = r.names("users")?;
        let (n_orgs, n_types, n_actions, n_roles) = (orgs.len(), types.len(), actions.len(), roles.len());

        // Resources.
        let res_names = r.names("resource keys")?;
        let hot = r.list::<12>("resources")?;
        let n_res = hot.len();
        if n_res != res_names.len() {
            return Err(invalid(
                "resources",
                format!("{n_res} resources but {} keys", res_names.len()),
            ));
        }
        if n_res >= ResHot::MANY as usize {
            return Err(invalid(
                "resources",
                format!("{n_res} resources, more than ids can number"),
            ));
        }
        let mut per_type = vec![0u32; n_types + 1];
        let mut instances = 0usize;
        for (id, c) in hot.iter().enumerate() {
            let (t, org, parent) = (u32_at(c, 0), u32_at(c, 4), u32_at(c, 8));
            let bad = |what: String| invalid("resources", format!("resource {id}: {what}"));
            if t as usize >= n_types {
                return Err(bad(format!("type {t} of {n_types}")));
            }
            if org != NONE && org as usize >= n_orgs {
                return Err(bad(format!("org {org} of {n_orgs}")));
            }
            match parent {
                NONE => {}
                ResHot::MANY => {}
                p if (p as usize) < n_res => {}
                p => return Err(bad(format!("parent {p} of {n_res}"))),
            }
            if org == NONE && parent != NONE {
                return Err(bad("a parent but no instance".into()));
            }
            instances += usize::from(org != NONE);
            if let Some(c) = per_type.get_mut(t as usize + 1) {
                *c += 1;
            }
            ix.res_hot.push(ResHot {
                resource_type: t,
                org,
                parent,
                ..ResHot::default()
            });
        }
        ix.counts.resources = instances;

        ix.names = Names {
            orgs,
            types,
            actions,
            roles,
            users: Interner::default(),
        };
        let lens = Lens {
            orgs: n_orgs,
            types: n_types,
            actions: n_actions,
            roles: n_roles,
            res: n_res,
        };

        // The hash tables, spans and instance bitmaps, made from the resources on a second
        // thread while this one reads the rest.
        let side = |hot: PagedVec<ResHot>| side_tables(user_names.clone(), hot, &res_names, &per_type);
        let (rest, side_made) = std::thread::scope(|scope| {
            let hot = ix.res_hot.clone();
            let other = std::thread::Builder::new()
                .name("permd-image".into())
                .spawn_scoped(scope, move || side(hot));
            let rest = ix.read_rest(&mut r, &user_names, &lens);
            (rest, other.ok().and_then(|h| h.join().ok()))
        });
        let with_grants = rest?;
        // Should no thread be had (or it fail), the same work here.
        let side = match side_made {
            Some(made) => made?,
            None => side(ix.res_hot.clone())?,
        };
        ix.names.users = side.users;
        ix.res_keys = side.res_keys;
        ix.res_names = res_names;
        ix.org_type_res = side.org_type_res;
        ix.res_hot = side.hot;
        ix.next_span = side.next_span;
        ix.renumber = false;
        for id in with_grants {
            if let Some(hot) = ix.res_hot.get_mut(id as usize) {
                hot.grants = true;
            }
        }
        Ok(ix)
    }

    /// What follows the resources in an image (several parents, the users table, the small
    /// parts), read, checked and written into this index; the resources' derived tables are
    /// `side_tables`'. Gives the ids of the resources with grants.
    fn read_rest(&mut self, r: &mut In<'_>, user_names: &NameList, n: &Lens) -> Result<Vec<u32>, ImageError> {
        let many_ids = r.u32s("resource parents")?;
        let many_ends = r.u32s("resource parents")?;
        let many_flat = r.u32s("resource parents")?;
        let many_seen = self.res_hot.iter().filter(|h| h.parent == ResHot::MANY).count();
        if many_ids.len() != many_seen || many_ends.len() != many_seen {
            return Err(invalid(
                "resource parents",
                format!(
                    "{many_seen} resources have several parents, the list has {} and {} ends",
                    many_ids.len(),
                    many_ends.len()
                ),
            ));
        }
        let mut extras: Vec<(u32, ResExtra)> = Vec::new();
        let mut start = 0usize;
        let mut prev: Option<u32> = None;
        for (&id, &end) in many_ids.iter().zip(&many_ends) {
            let bad = |what: String| invalid("resource parents", format!("resource {id}: {what}"));
            if prev.is_some_and(|p| p >= id) {
                return Err(bad("out of order".into()));
            }
            prev = Some(id);
            if self.res_hot.get(id as usize).is_none_or(|h| h.parent != ResHot::MANY) {
                return Err(bad("listed, but not a resource with several parents".into()));
            }
            let Some(parents) = many_flat.get(start..end as usize) else {
                return Err(bad(format!("parents {start}..{end} of {}", many_flat.len())));
            };
            if parents.len() < 2 {
                return Err(bad(format!("{} parents", parents.len())));
            }
            if let Some(p) = parents.iter().find(|&&p| p as usize >= n.res) {
                return Err(bad(format!("parent {p} of {}", n.res)));
            }
            start = end as usize;
            extras.push((
                id,
                ResExtra {
                    parents: parents.into(),
                    ..ResExtra::default()
                },
            ));
        }
        if start != many_flat.len() {
            return Err(invalid("resource parents", "entries after the last resource's"));
        }
        drop((many_ids, many_ends, many_flat));

        // Users.
        let users = read_users(r, user_names.len(), n.orgs, n.roles, n.res)?;
        self.counts.users = users.listed;
        self.counts.role_assignments = users.assignments;
        self.users = users.table;

        // The small parts.
        let len = r.len(1, "policy items")?;
        let small: Small = rmp_serde::from_slice(r.take(len, "policy items")?)
            .map_err(|e| invalid("policy items", format!("does not decode: {e}")))?;
        if !r.bytes.is_empty() {
            return Err(invalid("end", format!("{} bytes after the image", r.bytes.len())));
        }
        let mut prev: Option<u32> = None;
        for (id, user) in small.user_meta {
            let bad = |what: String| invalid("user items", format!("user {id}: {what}"));
            if prev.is_some_and(|p| p >= id) {
                return Err(bad("out of order".into()));
            }
            prev = Some(id);
            if !self.users.get(id).is_some_and(|u| u.listed) {
                return Err(bad("not a listed user".into()));
            }
            if user.key != user_names.name(id) {
                return Err(bad(format!(
                    "key `{}`, the user's is `{}`",
                    user.key,
                    user_names.name(id)
                )));
            }
            self.user_meta.insert(id, Arc::new(user));
        }

        // Resource extras: several parents (above), attributes, grants, holders, merged in id order.
        let mut prev: Option<u32> = None;
        let mut attributes = Vec::with_capacity(small.attributes.len());
        for (id, a) in small.attributes {
            let bad = |what: String| invalid("resource attributes", format!("resource {id}: {what}"));
            if prev.is_some_and(|p| p >= id) {
                return Err(bad("out of order".into()));
            }
            prev = Some(id);
            if self.res_hot.get(id as usize).is_none_or(|h| h.org == NONE) {
                return Err(bad("not an instance".into()));
            }
            attributes.push((id, a));
        }
        let mut grants: Vec<(u32, GrantRec)> = Vec::with_capacity(small.grants.len());
        for g in small.grants {
            let bad = |what: String| invalid("grants", format!("grant on resource {}: {what}", g.res));
            if g.res as usize >= n.res {
                return Err(bad(format!("resource of {}", n.res)));
            }
            if grants.last().is_some_and(|(res, _)| *res > g.res) {
                return Err(bad("out of order".into()));
            }
            if g.org as usize >= n.orgs || g.role as usize >= n.roles {
                return Err(bad(format!(
                    "org {} of {}, role {} of {}",
                    g.org, n.orgs, g.role, n.roles
                )));
            }
            let same = |x: &&(u32, GrantRec)| x.0 == g.res && x.1.org == g.org && x.1.role == g.role;
            if grants
                .iter()
                .rev()
                .take_while(|(res, _)| *res == g.res)
                .any(|x| same(&x))
            {
                return Err(bad("two grants of one org and role".into()));
            }
            for &(t, a) in &g.patterns {
                if (t != STAR && t as usize >= n.types) || (a != STAR && a as usize >= n.actions) {
                    return Err(bad(format!(
                        "pattern ({t}, {a}) of {} types, {} actions",
                        n.types, n.actions
                    )));
                }
            }
            grants.push((
                g.res,
                GrantRec {
                    org: g.org,
                    role: g.role,
                    patterns: g.patterns.into(),
                    when: g.when.as_deref().map(Condition::compile_or_never),
                },
            ));
        }
        let holders = Holders::of(&self.users, n.res);
        let with_grants = self.fill_extras(extras, attributes, grants, &holders);
        drop(holders);

        // The rest, made from the tables.
        self.items = Arc::new(PolicyItems {
            orgs: small.orgs,
            resource_types: small.resource_types,
            roles: small.roles,
            menus: small.menus,
            rules: small.rules,
        });
        self.urls = Arc::new(UrlRules::build(small.url_mappings));
        self.counts.url_mappings = self.urls.items.len();
        self.rebuild_policy();
        self.org_role_users = org_role_users(&self.users, n.orgs, n.roles);
        Ok(with_grants)
    }

    /// Writes the resources' `ResExtra`s from what the image gave, each list in id order, and
    /// the grants' kinds and counts; gives the ids of the resources with grants.
    fn fill_extras(
        &mut self,
        parents: Vec<(u32, ResExtra)>,
        attributes: Vec<(u32, Attributes)>,
        grants: Vec<(u32, GrantRec)>,
        holders: &Holders,
    ) -> Vec<u32> {
        let mut parents = parents.into_iter().peekable();
        let mut attributes = attributes.into_iter().peekable();
        let mut grants = grants.into_iter().peekable();
        let mut held = holders.ids.iter().copied().peekable();
        let mut with_grants = Vec::new();
        loop {
            let next = [
                parents.peek().map(|x| x.0),
                attributes.peek().map(|x| x.0),
                grants.peek().map(|x| x.0),
                held.peek().copied(),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(id) = next else { break };
            let mut extra = parents.next_if(|x| x.0 == id).map(|x| x.1).unwrap_or_default();
            extra.attributes = attributes.next_if(|x| x.0 == id).map(|x| Box::new(x.1));
            while let Some((_, g)) = grants.next_if(|x| x.0 == id) {
                self.count_grant(&g, 1);
                self.cond_grants += u32::from(g.when.is_some());
                self.counts.role_grants += 1;
                extra.grants.push(g);
            }
            if held.next_if_eq(&id).is_some() {
                extra.holders = holders.of_res(id).to_vec();
            }
            if !extra.grants.is_empty() {
                with_grants.push(id);
            }
            *self.res_extra.slot(id as usize) = Some(Arc::new(extra));
        }
        with_grants
    }
}

/// The lengths of the tables ids point into.
struct Lens {
    orgs: usize,
    types: usize,
    actions: usize,
    roles: usize,
    res: usize,
}

/// What is made from the resources alone, on the second thread.
struct Side {
    users: Interner,
    res_keys: Vec<KeyMap>,
    org_type_res: imbl::HashMap<(u32, u32), Arc<RoaringBitmap>>,
    /// The hot table with its spans numbered.
    hot: PagedVec<ResHot>,
    next_span: u32,
}

fn side_tables(
    user_names: NameList,
    hot: PagedVec<ResHot>,
    res_names: &NameList,
    per_type: &[u32],
) -> Result<Side, ImageError> {
    let users = interner(user_names, "users")?;
    let res_keys = res_keys(&hot, res_names, per_type)?;
    let org_type_res = org_type_res(&hot);
    // `number_forest` is the index's; an index around the hot table alone runs it.
    let mut forest = Index::empty(0);
    forest.res_hot = hot;
    forest.number_forest();
    Ok(Side {
        users,
        res_keys,
        org_type_res,
        hot: forest.res_hot,
        next_span: forest.next_span,
    })
}

fn interner(names: NameList, part: &'static str) -> Result<Interner, ImageError> {
    Interner::from_names(names).map_err(|id| invalid(part, format!("name {id} repeats an earlier one")))
}

/// The users table from the image, checked: runs within their page's arrays, sorted and
/// unique, ids in range, the org masks what the runs say.
fn read_users(
    r: &mut In<'_>,
    n_names: usize,
    n_orgs: usize,
    n_roles: usize,
    n_res: usize,
) -> Result<UsersRead, ImageError> {
    const PART: &str = "users table";
    let slots = r.list::<16>(PART)?;
    let len = slots.len();
    if len > n_names {
        return Err(invalid(PART, format!("{len} users but {n_names} user names")));
    }
    let pages = len.div_ceil(PER);
    let org_lens = r.u32s(PART)?;
    let inst_lens = r.u32s(PART)?;
    if org_lens.len() != pages || inst_lens.len() != pages {
        return Err(invalid(
            PART,
            format!("{len} users in {pages} pages, not {}", org_lens.len()),
        ));
    }
    let org_flat = r.list::<8>(PART)?;
    let inst_flat = r.list::<12>(PART)?;
    let (mut org_at, mut inst_at) = (0usize, 0usize);
    let mut table = UserTable {
        len,
        ..UserTable::default()
    };
    let (mut listed, mut assignments) = (0usize, 0usize);
    for p in 0..pages {
        let bad = |what: String| invalid(PART, format!("page {p}: {what}"));
        let take = |flat_len: usize, at: &mut usize, n: u32| -> Result<std::ops::Range<usize>, ImageError> {
            let end = at.checked_add(n as usize).filter(|&e| e <= flat_len);
            let Some(end) = end else {
                return Err(bad(format!("an array of {n} past the end of the entries")));
            };
            let range = *at..end;
            *at = end;
            Ok(range)
        };
        let org_range = take(org_flat.len(), &mut org_at, org_lens.get(p).copied().unwrap_or(0))?;
        let inst_range = take(inst_flat.len(), &mut inst_at, inst_lens.get(p).copied().unwrap_or(0))?;
        let org: Arc<[(u32, u32)]> = org_flat
            .get(org_range)
            .unwrap_or_default()
            .iter()
            .map(|c| (u32_at(c, 0), u32_at(c, 4)))
            .collect();
        let inst: Arc<[(u32, u32, u32)]> = inst_flat
            .get(inst_range)
            .unwrap_or_default()
            .iter()
            .map(|c| (u32_at(c, 0), u32_at(c, 4), u32_at(c, 8)))
            .collect();
        let first = p * PER;
        let in_page = (len - first).min(PER);
        let mut page = vec![Slot::default(); PER];
        for (at, c) in slots.get(first..first + in_page).unwrap_or_default().iter().enumerate() {
            let flags = u32_at(c, 12);
            if flags & !0x00ff_ff01 != 0 {
                return Err(bad(format!("user {}: flags {flags:#x}", first + at)));
            }
            if let Some(s) = page.get_mut(at) {
                *s = Slot {
                    org_end: u32_at(c, 0),
                    inst_end: u32_at(c, 4),
                    inst_orgs: u32_at(c, 8),
                    listed: flags & 1 != 0,
                    org_pad: (flags >> 8) as u8,
                    inst_pad: (flags >> 16) as u8,
                };
            }
        }
        let mut last = Slot::default();
        for at in 0..in_page {
            let uid = first + at;
            let bad = |what: String| invalid(PART, format!("user {uid}: {what}"));
            let s = page.get(at).copied().unwrap_or_default();
            // `bounds` reads the previous slot's ends; they must not pass this one's, and the
            // pads must keep the start within the run.
            let prev = if at == 0 { Slot::default() } else { last };
            if prev.org_end as usize + s.org_pad as usize > s.org_end as usize
                || prev.inst_end as usize + s.inst_pad as usize > s.inst_end as usize
            {
                return Err(bad("a run ends before it starts".into()));
            }
            let (o0, o1, i0, i1) = bounds(&page, at);
            let (Some(org_run), Some(inst_run)) = (org.get(o0..o1), inst.get(i0..i1)) else {
                return Err(bad(format!(
                    "runs {o0}..{o1} and {i0}..{i1} past the page's {} and {} entries",
                    org.len(),
                    inst.len()
                )));
            };
            if !org_run.is_sorted_by(|a, b| a < b) || !inst_run.is_sorted_by(|a, b| a < b) {
                return Err(bad("a run is not sorted".into()));
            }
            if let Some(&(o, role)) = org_run
                .iter()
                .find(|&&(o, role)| o as usize >= n_orgs || role as usize >= n_roles)
            {
                return Err(bad(format!("org-wide ({o}, {role}) of {n_orgs} orgs, {n_roles} roles")));
            }
            let mut mask = 0u32;
            for &(res, o, role) in inst_run {
                if res as usize >= n_res || o as usize >= n_orgs || role as usize >= n_roles {
                    return Err(bad(format!(
                        "instance ({res}, {o}, {role}) of {n_res} resources, {n_orgs} orgs, {n_roles} roles"
                    )));
                }
                mask |= 1 << (o % 32);
            }
            if mask != s.inst_orgs {
                return Err(bad(format!("org mask {:#x}, its runs say {mask:#x}", s.inst_orgs)));
            }
            listed += usize::from(s.listed);
            assignments += org_run.len() + inst_run.len();
            last = s;
        }
        // The slots past the last user, as a bulk fill leaves them: empty runs at the end.
        for s in page.iter_mut().skip(in_page) {
            (s.org_end, s.inst_end) = (last.org_end, last.inst_end);
        }
        table.slots.push(Arc::from(page));
        table.org.push(org);
        table.inst.push(inst);
    }
    if org_at != org_flat.len() || inst_at != inst_flat.len() {
        return Err(invalid(PART, "entries after the last page's"));
    }
    Ok(UsersRead {
        table,
        listed,
        assignments,
    })
}

/// Per resource, its instance holders as (user, org, role), sorted: the users' instance runs
/// turned around (users in id order, each run sorted by resource, so each resource's list
/// comes out sorted), in one array by resource.
struct Holders {
    /// The resources with holders, in id order.
    ids: Vec<u32>,
    /// Per resource id, where its holders end in `flat` (they start where the previous id's end).
    ends: Vec<u32>,
    flat: Vec<(u32, u32, u32)>,
}

impl Holders {
    fn of(users: &UserTable, n_res: usize) -> Holders {
        let mut ends = vec![0u32; n_res + 1];
        let runs = || {
            users
                .iter()
                .flat_map(|u| u.inst_roles.iter().map(move |&(res, org, role)| (res, u.id, org, role)))
        };
        for (res, ..) in runs() {
            if let Some(c) = ends.get_mut(res as usize + 1) {
                *c += 1;
            }
        }
        let mut ids = Vec::new();
        for res in 0..n_res {
            let (Some(&before), Some(&count)) = (ends.get(res), ends.get(res + 1)) else {
                break;
            };
            if count > 0 {
                ids.push(res as u32);
            }
            if let Some(e) = ends.get_mut(res + 1) {
                *e = before + count;
            }
        }
        let total = ends.last().copied().unwrap_or(0) as usize;
        let mut flat = vec![(0u32, 0u32, 0u32); total];
        // `ends[res]` is the start of `res` until its holders are placed, then its end.
        for (res, uid, org, role) in runs() {
            if let Some(at) = ends.get_mut(res as usize)
                && let Some(slot) = flat.get_mut(*at as usize)
            {
                *slot = (uid, org, role);
                *at += 1;
            }
        }
        ends.pop();
        Holders { ids, ends, flat }
    }

    fn of_res(&self, res: u32) -> &[(u32, u32, u32)] {
        let start = res
            .checked_sub(1)
            .and_then(|p| self.ends.get(p as usize))
            .copied()
            .unwrap_or(0);
        let end = self.ends.get(res as usize).copied().unwrap_or(0);
        self.flat.get(start as usize..end as usize).unwrap_or_default()
    }
}

/// Per type, its resources' key → id table; an error for a key twice in one type.
fn res_keys(hot: &PagedVec<ResHot>, names: &NameList, per_type: &[u32]) -> Result<Vec<KeyMap>, ImageError> {
    // Ids grouped by type (counting sort): `per_type[t + 1]` counted type `t`'s.
    let mut start: Vec<usize> = Vec::with_capacity(per_type.len());
    let mut sum = 0usize;
    for &c in per_type {
        sum += c as usize;
        start.push(sum);
    }
    let mut ids = vec![0u32; sum];
    let mut fill = start.clone();
    for (id, h) in hot.iter().enumerate() {
        if let Some(at) = fill.get_mut(h.resource_type as usize)
            && let Some(slot) = ids.get_mut(*at)
        {
            *slot = id as u32;
            *at += 1;
        }
    }
    start
        .windows(2)
        .map(|w| {
            let of_type = ids.get(w[0]..w[1]).unwrap_or_default();
            KeyMap::of_ids(of_type.iter().copied(), names).map_err(|id| {
                invalid(
                    "resource keys",
                    format!("resource {id}: key `{}` twice in its type", names.name(id)),
                )
            })
        })
        .collect()
}

/// Users with an org-wide assignment, per (org, role), from the users table: the bitmaps in
/// one array by (org, role) when there are not many pairs, else in a hash map.
fn org_role_users(users: &UserTable, n_orgs: usize, n_roles: usize) -> imbl::HashMap<(u32, u32), Arc<RoaringBitmap>> {
    fn push(b: &mut RoaringBitmap, uid: u32) {
        if b.try_push(uid).is_err() {
            b.insert(uid);
        }
    }
    let pairs = n_orgs.saturating_mul(n_roles);
    if pairs <= 1 << 16 {
        let mut dense: Vec<RoaringBitmap> = vec![RoaringBitmap::new(); pairs];
        for u in users.iter() {
            for &(org, role) in u.org_roles {
                if let Some(b) = dense.get_mut(org as usize * n_roles + role as usize) {
                    push(b, u.id);
                }
            }
        }
        return dense
            .into_iter()
            .enumerate()
            .filter(|(_, b)| !b.is_empty())
            .map(|(i, b)| (((i / n_roles) as u32, (i % n_roles) as u32), Arc::new(b)))
            .collect();
    }
    let mut bitmaps: HashMap<(u32, u32), RoaringBitmap, foldhash::fast::RandomState> = HashMap::default();
    for u in users.iter() {
        for &key in u.org_roles {
            push(bitmaps.entry(key).or_default(), u.id);
        }
    }
    bitmaps.into_iter().map(|(k, b)| (k, Arc::new(b))).collect()
}

/// Instances per (org, type), from the hot table.
fn org_type_res(hot: &PagedVec<ResHot>) -> imbl::HashMap<(u32, u32), Arc<RoaringBitmap>> {
    let mut bitmaps: HashMap<(u32, u32), RoaringBitmap, foldhash::fast::RandomState> = HashMap::default();
    for (id, h) in hot.iter().enumerate() {
        if h.org != NONE {
            let b = bitmaps.entry((h.org, h.resource_type)).or_default();
            if b.try_push(id as u32).is_err() {
                b.insert(id as u32);
            }
        }
    }
    bitmaps.into_iter().map(|(k, b)| (k, Arc::new(b))).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::model::{Encoding, Snapshot};

    /// Every part an image holds: several parents, attributes, users that say more than a
    /// key, grants with and without conditions, conditional roles, rules, menus, URL
    /// mappings, dangling references.
    const DOC: &str = r#"
format: 1
version: 7
orgs:
  - {key: acme, attributes: {tier: gold}}
  - {key: acme-eu, parent: acme}
  - {key: globex}
resource_types:
  - {key: document, actions: [read, write, delete]}
  - {key: folder, actions: [read, write]}
  - {key: camera, actions: [play, export]}
  - {key: site, actions: [manage]}
roles:
  - {key: viewer, permissions: ["document:read", "folder:read"]}
  - {key: editor, permissions: ["document:write", {permission: "document:delete", when: "resource.attributes.owner == user.key"}], extends: [viewer]}
  - {key: guard, org: acme, permissions: []}
  - {key: viewer, org: globex, permissions: ["folder:read"]}
users:
  - {key: alice, email: alice@example.com, attributes: {dept: a}}
  - {key: bob}
resources:
  - {type: folder, key: shared, org: acme}
  - {type: folder, key: inner, org: acme, parents: ["folder:shared"], attributes: {owner: bob}}
  - {type: document, key: photo, org: acme, parents: ["folder:inner", "folder:gx"], attributes: {owner: alice}}
  - {type: folder, key: gx, org: globex}
  - {type: document, key: g1, org: globex, parents: ["folder:gx"]}
  - {type: site, key: hq, org: acme}
  - {type: camera, key: cam1, org: acme, parents: ["site:hq"]}
  - {type: document, key: orphan, org: nowhere, parents: ["folder:missing"]}
role_assignments:
  - {user: alice, role: editor, org: acme}
  - {user: bob, role: viewer, org: acme, resource: "folder:shared"}
  - {user: bob, role: viewer, org: globex, resource: "folder:gx"}
  - {user: carol, role: guard, org: acme}
  - {user: carol, role: editor, org: acme, resource: "document:photo"}
  - {user: dave, role: viewer, org: globex}
  - {user: erin, role: viewer, org: acme, resource: "folder:nowhere"}
role_grants:
  - {org: acme, role: guard, resource: "site:hq", actions: ["camera:play"]}
  - {org: acme, role: viewer, resource: "site:hq", actions: ["camera:*"], when: "context.ip.startsWith('10.')"}
  - {org: globex, role: viewer, resource: "folder:gx", actions: ["*:read"]}
rules:
  - {key: owners, permissions: ["document:write"], when: "resource.attributes.owner == user.key"}
menus:
  - {platform: web, code: m1, name: Home}
url_mappings:
  - {method: GET, url: "/docs/{id}", resource: document, action: read}
"#;

    fn built() -> Index {
        let ix = Index::build(&Snapshot::load(DOC.as_bytes(), Encoding::Yaml).unwrap());
        // A batch, so the image holds names and keys added after the build (overlays).
        let batch = r#"{"from_version": 7, "to_version": 8, "ops": [
            {"op": "upsert", "kind": "user", "value": {"key": "zoe", "first_name": "Zoe"}},
            {"op": "upsert", "kind": "resource", "value": {"type": "document", "key": "late", "org": "acme", "parents": ["folder:shared"]}},
            {"op": "upsert", "kind": "role_assignment", "value": {"user": "zoe", "role": "viewer", "org": "acme", "resource": "document:late"}},
            {"op": "delete", "kind": "role_assignment", "value": {"user": "dave", "role": "viewer", "org": "globex"}}
        ]}"#;
        ix.apply(&DeltaBatch::from_json(batch.as_bytes()).unwrap()).unwrap()
    }

    fn image(ix: &Index) -> Vec<u8> {
        let mut out = Vec::new();
        ix.write_image(&mut out).unwrap();
        out
    }

    const USERS: [&str; 7] = ["alice", "bob", "carol", "dave", "erin", "zoe", "nobody"];
    const ACTIONS: [&str; 6] = ["read", "write", "delete", "play", "export", "manage"];

    /// Every (user, action, resource) decision, with its reason.
    fn decisions(ix: &Index) -> Vec<(bool, Reason)> {
        let resources = [
            ("folder", "shared"),
            ("folder", "inner"),
            ("document", "photo"),
            ("folder", "gx"),
            ("document", "g1"),
            ("camera", "cam1"),
            ("document", "orphan"),
            ("document", "late"),
            ("site", "hq"),
        ];
        let mut out = Vec::new();
        for u in USERS {
            for a in ACTIONS {
                for (t, k) in resources {
                    for org in [None, Some("acme"), Some("globex")] {
                        let q = Query {
                            subject: Subject::User(u),
                            action: a,
                            resource_type: t,
                            resource_key: Some(k),
                            org,
                            group_type: None,
                            request: None,
                        };
                        let d = ix.decide(&q);
                        out.push((d.allow, d.reason));
                    }
                }
            }
        }
        out
    }

    /// What the index holds beyond its document: derived tables that must come out the same.
    fn derived(ix: &Index) -> String {
        let mut org_role: Vec<_> = ix
            .org_role_users
            .iter()
            .map(|(k, b)| (*k, b.iter().collect::<Vec<_>>()))
            .collect();
        org_role.sort();
        let mut org_type: Vec<_> = ix
            .org_type_res
            .iter()
            .map(|(k, b)| (*k, b.iter().collect::<Vec<_>>()))
            .collect();
        org_type.sort();
        let extras: Vec<_> = (0..ix.res_count())
            .map(|id| (ix.res_holders(id).to_vec(), ix.res_grants(id).to_vec()))
            .collect();
        let kinds: Vec<_> = (0..ix.names.orgs.len() as u32)
            .map(|o| ix.org_grants(o).to_vec())
            .collect();
        let hot: Vec<_> = ix
            .res_hot
            .iter()
            .map(|h| (h.org, h.resource_type, h.parent, h.grants))
            .collect();
        format!(
            "{org_role:?} {org_type:?} {extras:?} {kinds:?} {hot:?} {:?} {} {}",
            ix.counts,
            ix.cond_grants,
            ix.users.iter().map(|u| format!("{u:?}")).collect::<String>()
        )
    }

    #[test]
    fn an_image_reads_back_as_the_same_index() {
        let ix = built();
        let back = Index::read_image(&image(&ix)).unwrap();
        assert_eq!(back.version(), 8);
        assert_eq!(back.to_snapshot(), ix.to_snapshot());
        assert_eq!(derived(&back), derived(&ix));
        assert_eq!(decisions(&back), decisions(&ix));
        assert_eq!(back.span_violation(), None);
        assert_eq!(back.ignored(), ix.ignored());
        assert!(back.has_conditions() && back.conditional_grants());
        // Ids are the same, so a lookup by key finds the same ids.
        for u in USERS {
            assert_eq!(back.names.users.get(u), ix.names.users.get(u), "{u}");
        }
        assert_eq!(back.lookup_res("document", "late"), ix.lookup_res("document", "late"));
        assert_eq!(back.lookup_res("folder", "nowhere"), ix.lookup_res("folder", "nowhere"));
        // The same batch on both gives the same next version.
        let batch = r#"{"from_version": 8, "to_version": 9, "ops": [
            {"op": "upsert", "kind": "role_assignment", "value": {"user": "nina", "role": "guard", "org": "acme"}},
            {"op": "upsert", "kind": "resource", "value": {"type": "folder", "key": "inner", "org": "acme"}},
            {"op": "delete", "kind": "role_grant", "value": {"org": "acme", "role": "guard", "resource": "site:hq"}},
            {"op": "upsert", "kind": "org", "value": {"key": "initech"}}
        ]}"#;
        let batch = DeltaBatch::from_json(batch.as_bytes()).unwrap();
        let (a, b) = (ix.apply(&batch).unwrap(), back.apply(&batch).unwrap());
        assert_eq!(b.to_snapshot(), a.to_snapshot());
        assert_eq!(derived(&b), derived(&a));
        assert_eq!(decisions(&b), decisions(&a));
        assert_eq!(b.span_violation(), None);
        // An image of the loaded index is the image of the original.
        assert_eq!(image(&back), image(&ix));
        // And the empty index.
        let empty = Index::empty(3);
        let back = Index::read_image(&image(&empty)).unwrap();
        assert_eq!(back.to_snapshot(), empty.to_snapshot());
    }

    /// Reading must not panic; when it reads, the index must answer without panicking.
    fn read_and_use(bytes: &[u8]) -> Result<(), ImageError> {
        let ix = Index::read_image(bytes)?;
        let _ = decisions(&ix);
        let _ = ix.to_snapshot();
        let _ = ix.ignored();
        for u in USERS {
            let _ = ix.list_resources(Subject::User(u), "document", "read", None);
        }
        let batch = r#"{"from_version": 8, "to_version": 9, "ops": [
            {"op": "delete", "kind": "resource", "value": {"type": "folder", "key": "shared"}},
            {"op": "delete", "kind": "role_assignment", "value": {"user": "carol", "role": "editor", "org": "acme", "resource": "document:photo"}},
            {"op": "upsert", "kind": "role_assignment", "value": {"user": "bob", "role": "viewer", "org": "acme"}}
        ]}"#;
        if let Ok(next) = ix.apply(&DeltaBatch::from_json(batch.as_bytes()).unwrap()) {
            let _ = decisions(&next);
        }
        Ok(())
    }

    #[test]
    fn a_cut_image_is_refused_at_every_length() {
        let bytes = image(&built());
        for n in 0..bytes.len() {
            let err = read_and_use(&bytes[..n]).unwrap_err();
            assert!(
                matches!(
                    err,
                    ImageError::Truncated { .. } | ImageError::NotAnImage | ImageError::Invalid { .. }
                ),
                "{n}: {err}"
            );
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            read_and_use(&long).unwrap_err(),
            invalid("end", "1 bytes after the image")
        );
    }

    #[test]
    fn damaged_bytes_never_panic() {
        let bytes = image(&built());
        let mut refused = 0;
        for at in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[at] ^= flip;
                refused += usize::from(read_and_use(&b).is_err());
            }
        }
        // Most damage is caught; the rest (a letter of a name, an attribute's value) reads
        // as another index that answers without panicking.
        assert!(refused > bytes.len(), "{refused} of {}", bytes.len() * 3);
    }

    #[test]
    fn another_build_is_refused_whole() {
        let bytes = image(&built());
        for (at, what) in [(8, "format"), (12, "layout")] {
            let mut b = bytes.clone();
            b[at] += 1;
            let err = Index::read_image(&b).unwrap_err();
            assert!(matches!(err, ImageError::OtherBuild { .. }), "{what}: {err}");
            assert!(err.to_string().contains("another build"), "{err}");
        }
        let mut b = bytes.clone();
        let v = 16 + 4;
        b[v] = b'9';
        assert!(matches!(Index::read_image(&b), Err(ImageError::OtherBuild { .. })));
        assert_eq!(
            Index::read_image(b"PERMDC01 and more").unwrap_err(),
            ImageError::NotAnImage
        );
    }

    /// Ids out of range, runs out of order, names twice: each refused with its part named.
    #[test]
    fn wrong_tables_are_refused_with_the_part_named() {
        #[track_caller]
        fn err(ix: &Index) -> String {
            match Index::read_image(&image(ix)) {
                Ok(_) => panic!("read"),
                Err(e) => e.to_string(),
            }
        }
        let base = built();
        let uid = |ix: &Index, u: &str| ix.names.users.get(u).unwrap();

        let mut ix = base.clone();
        ix.users.insert_org_role(uid(&ix, "bob"), (99, 0));
        assert!(
            err(&ix).contains("`users table`: user 1: org-wide (99, 0) of 4 orgs"),
            "{}",
            err(&ix)
        );

        let mut ix = base.clone();
        let n = ix.res_count();
        ix.users.insert_inst_role(uid(&ix, "bob"), (n + 5, 0, 0));
        assert!(err(&ix).contains("`users table`: user 1: instance"), "{}", err(&ix));

        let mut ix = base.clone();
        let alice = uid(&ix, "alice");
        let mut page = ix.users.slots[0].to_vec();
        page[alice as usize].inst_orgs ^= 1 << 7;
        ix.users.slots[0] = page.into();
        assert!(err(&ix).contains("org mask"), "{}", err(&ix));

        let mut ix = base.clone();
        let mut page = ix.users.slots[0].to_vec();
        page[1].org_end = 60_000;
        ix.users.slots[0] = page.into();
        assert!(err(&ix).contains("`users table`: user 1: runs"), "{}", err(&ix));

        let mut ix = base.clone();
        ix.users.insert_org_role(alice, (2, 0));
        let mut run = ix.users.org[0].to_vec();
        let (o0, o1, _, _) = bounds(&ix.users.slots[0], alice as usize);
        assert_eq!(o1 - o0, 2);
        run.swap(o0, o0 + 1);
        ix.users.org[0] = run.into();
        assert!(
            err(&ix).contains("`users table`: user 0: a run is not sorted"),
            "{}",
            err(&ix)
        );

        let mut ix = base.clone();
        ix.res_hot.slot(0).parent = 5_000;
        assert!(
            err(&ix).contains("`resources`: resource 0: parent 5000 of"),
            "{}",
            err(&ix)
        );

        let mut ix = base.clone();
        ix.res_hot.slot(0).org = 77;
        assert!(
            err(&ix).contains("`resources`: resource 0: org 77 of 4"),
            "{}",
            err(&ix)
        );

        let mut ix = base.clone();
        ix.res_hot.slot(0).parent = ResHot::MANY;
        assert!(err(&ix).contains("`resource parents`"), "{}", err(&ix));

        let mut ix = base.clone();
        let hq = ix.lookup_res("site", "hq").unwrap();
        ix.res_mut(hq).unwrap().grants[0].patterns = Box::new([(STAR, 500)]);
        assert!(err(&ix).contains("`grants`: grant on resource"), "{}", err(&ix));

        let mut ix = base.clone();
        let g = ix.res_mut(hq).unwrap().grants[0].clone();
        ix.res_mut(hq).unwrap().grants.push(g);
        assert!(err(&ix).contains("two grants of one org and role"), "{}", err(&ix));

        let mut ix = base.clone();
        let alice_meta = ix.user_meta(alice).unwrap().clone();
        ix.user_meta.insert(uid(&ix, "bob"), Arc::new(alice_meta));
        assert!(err(&ix).contains("`user items`: user 1: key `alice`"), "{}", err(&ix));

        // A type named twice, and a resource key twice in its type.
        let bytes = image(&base);
        let mut b = bytes.clone();
        let at = b.windows(6).position(|w| w == b"camera").unwrap();
        b[at..at + 6].copy_from_slice(b"folder");
        let e = Index::read_image(&b).unwrap_err().to_string();
        assert!(
            e.contains("`types`: name") && e.contains("repeats an earlier one"),
            "{e}"
        );
        let mut b = bytes.clone();
        let at = b.windows(7).position(|w| w == b"missing").unwrap();
        b[at..at + 7].copy_from_slice(b"nowhere");
        let e = Index::read_image(&b).unwrap_err().to_string();
        assert!(
            e.contains("`resource keys`: resource") && e.contains("key `nowhere` twice in its type"),
            "{e}"
        );
    }
}
