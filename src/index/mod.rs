//! The compiled, immutable index of one snapshot version, `decide()` and the queries. Pure
//! and synchronous: no tokio, hyper, clock or file access. Every key is interned to a dense
//! u32; facts live in paged copy-on-write vectors and roaring bitmaps, so `apply(batch)`
//! yields the next version sharing everything it does not touch.

mod conditional;
mod decide;
mod dropin;
mod explain;
mod export;
mod facts;
mod image;
mod listings;
mod paged;
mod policy;
mod query;
mod spans;
mod stream;
#[cfg(test)]
mod tests;
mod users;

pub use decide::{CondSite, Decision, Evidence, Query, Reason, Subject, Tried};
pub use dropin::{TenantInfo, UrlRules};
pub use explain::Explanation;
pub(crate) use image::header as image_header;
pub use image::{IMAGE_FORMAT, IMAGE_LAYOUT, ImageError};
pub use paged::{Interner, KeyMap, NameList, PagedVec};
pub use policy::{Names, Policy, PolicyItems, STAR};
pub use query::{
    AssignmentFilter, AssignmentRow, DEFAULT_LIMIT, GroupNode, MAX_LIMIT, MAX_TREE_NODES, MenuNode, PermEntry,
    QueryError, RoleInfo, UserPermissions, UserPermissionsFilter, decode_cursor, encode_cursor, page_bitmap,
};
pub use stream::Streamed;
pub use users::{UserRec, UserTable};

use crate::cond::Condition;
use crate::model::{
    Attributes, DeltaBatch, Identity, Item, Kind, Op, ResourceRef, Role, RoleAssignment, RoleGrant, Snapshot, User, put,
};
use roaring::RoaringBitmap;
use serde::Serialize;
use std::sync::{Arc, OnceLock};

/// Per (condition pointer, type id): the instances a resource-only condition holds for.
type CondHolds = std::collections::HashMap<(usize, u32), Arc<RoaringBitmap>>;

/// "No id" in dense id tables.
pub const NONE: u32 = u32::MAX;

/// An item the index keeps but that can grant nothing: a dangling reference (model.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ignored {
    pub kind: &'static str,
    pub item: String,
    pub reason: String,
}

impl Ignored {
    pub fn new(kind: &'static str, item: String, reason: String) -> Ignored {
        Ignored { kind, item, reason }
    }
}

/// Why a batch was not applied; the active index is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("batch starts at version `{from}` but the active version is `{active}`")]
    VersionGap { from: u64, active: u64 },
}

/// A resource instance as the document has it: a view put together from the resource's
/// `ResHot` entry (its org and only parent) and its `ResExtra` (several parents, attributes).
#[derive(Clone, Copy, Debug)]
pub struct ResItem<'a> {
    pub org: u32,
    /// Parent resource ids in document order.
    pub parents: &'a [u32],
    pub attributes: Option<&'a Attributes>,
}

/// What `decide` reads of a resource on every step up a tree, kept apart from `ResRec` in a
/// flat array of 24-byte entries: one cache line a level (two for the one entry in four that
/// straddles a line) instead of three pointer chases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResHot {
    /// The instance's org id; `NONE` when the document has no instance under this key.
    pub org: u32,
    pub resource_type: u32,
    /// The only parent, `NONE` for none; `MANY` when there are several (read `ResItem`).
    pub parent: u32,
    /// The resource's span in the tree (`spans.rs`): its number, `NONE` when not precise,
    /// and the end of its subtree's numbers.
    pub pre: u32,
    pub end: u32,
    /// The resource has grants (of any org).
    pub grants: bool,
    /// Some precise resource's span was placed below this one's.
    pub kids: bool,
}

impl ResHot {
    /// `parent` when the instance has more than one.
    pub const MANY: u32 = u32::MAX - 1;
}

impl Default for ResHot {
    fn default() -> ResHot {
        ResHot {
            org: NONE,
            resource_type: NONE,
            parent: NONE,
            pre: NONE,
            end: 0,
            grants: false,
            kids: false,
        }
    }
}

/// A role grant on one resource.
#[derive(Clone, Debug, PartialEq)]
pub struct GrantRec {
    pub org: u32,
    pub role: u32,
    /// Action patterns as (type id or STAR, action id or STAR).
    pub patterns: Box<[(u32, u32)]>,
    /// The grant counts only when this holds (model.md §5).
    pub when: Option<Arc<Condition>>,
}

/// Everything known under one `type:key`, viewed together: the instance (if the document has
/// it), the grants on it and the instance assignments on it. Put together on demand from the
/// three places a resource lives in (`ResHot`, its key in `res_names`, its `ResExtra`).
#[derive(Clone, Copy, Debug)]
pub struct ResRec<'a> {
    pub resource_type: u32,
    pub key: &'a str,
    pub item: Option<ResItem<'a>>,
    pub grants: &'a [GrantRec],
    /// Instance assignments on this resource as (user id, org id, role-name id), sorted.
    pub holders: &'a [(u32, u32, u32)],
}

/// What only some resources have: several parents, attributes, grants, instance
/// assignments. Kept per resource id only for those that have any (most resources are a key,
/// a type, an org and at most one parent, all of which `ResHot` and `res_names` hold).
#[derive(Clone, Debug, Default)]
pub struct ResExtra {
    /// Parent ids in document order when there are several (`ResHot::parent` is `MANY`).
    parents: Box<[u32]>,
    attributes: Option<Box<Attributes>>,
    grants: Vec<GrantRec>,
    /// Instance assignments on this resource as (user id, org id, role-name id), sorted.
    holders: Vec<(u32, u32, u32)>,
}

impl ResExtra {
    fn is_empty(&self) -> bool {
        self.parents.is_empty() && self.attributes.is_none() && self.grants.is_empty() && self.holders.is_empty()
    }
}

/// One kind of grant in an org: its role-name id and one action pattern, with the number of
/// grants (on any resource) that have it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GrantKind {
    pub role: u32,
    pub pattern: (u32, u32),
    pub count: u32,
}

/// Item counts per kind, as the document has them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub orgs: usize,
    pub resource_types: usize,
    pub roles: usize,
    pub users: usize,
    pub resources: usize,
    pub role_assignments: usize,
    pub role_grants: usize,
    pub menus: usize,
    pub rules: usize,
    pub url_mappings: usize,
}

/// One immutable version of the data, ready to answer.
#[derive(Clone)]
pub struct Index {
    version: u64,
    pub(crate) names: Names,
    items: Arc<PolicyItems>,
    pub(crate) policy: Arc<Policy>,
    /// Per user id, their assignments (`users.rs`).
    pub(crate) users: UserTable,
    /// The user items that say more than their key (most users are a key and nothing else,
    /// and the key is already interned: at 1M users that is ~150 MB not spent on copies).
    user_meta: imbl::HashMap<u32, Arc<User>>,
    /// Per resource id: its type, org, only parent, span (see `ResHot`). Every resource id has
    /// an entry, so its length is the number of resource ids.
    res_hot: PagedVec<ResHot>,
    /// Per resource id: its key.
    res_names: NameList,
    /// Per resource id: what only some resources have (`ResExtra`), `None` for the rest.
    res_extra: PagedVec<Option<Arc<ResExtra>>>,
    /// Per type id: instance key → resource id.
    res_keys: Vec<KeyMap>,
    /// Users with an org-wide assignment, per (org id, role-name id).
    org_role_users: imbl::HashMap<(u32, u32), Arc<RoaringBitmap>>,
    /// Instances per (org id, type id).
    org_type_res: imbl::HashMap<(u32, u32), Arc<RoaringBitmap>>,
    /// Per org id: which grants exist in it, so `decide` walks a tree for step 6 only when
    /// one could match.
    org_grants: PagedVec<Vec<GrantKind>>,
    counts: Counts,
    /// URL mapping rules, as the document has them and compiled (`dropin.rs`).
    urls: Arc<UrlRules>,
    ignored: Arc<OnceLock<Arc<Vec<Ignored>>>>,
    /// Reverse `parents` links and grant sites, for the queries; computed once per version on
    /// first use.
    query_aux: Arc<OnceLock<Arc<query::QueryAux>>>,
    /// Per (condition, type id): the instances of the type a resource-only condition holds
    /// for, with no request data; computed once per version on first use by a listing.
    cond_holds: Arc<std::sync::Mutex<CondHolds>>,
    /// Grants with a `when` (model.md §5): queries and `explain` take the conditional path
    /// only when some exist or the policy has conditions.
    cond_grants: u32,
    /// The first number of `spans.rs` not handed out.
    next_span: u32,
    /// A change in this batch (or the build) needs the spans renumbered at its end.
    renumber: bool,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("version", &self.version)
            .field("counts", &self.counts)
            .finish()
    }
}

impl Index {
    /// Compiles a validated snapshot.
    pub fn build(snapshot: &Snapshot) -> Index {
        let mut ix = Index::empty(snapshot.version);
        for u in &snapshot.users {
            ix.upsert_user(u);
        }
        for r in &snapshot.resources {
            ix.upsert_resource(r);
        }
        ix.bulk_assignments(&snapshot.role_assignments);
        ix.finish(snapshot);
        ix
    }

    /// An index of version `version` with nothing in it yet: the build's start.
    fn empty(version: u64) -> Index {
        Index {
            version,
            names: Names::default(),
            items: Arc::default(),
            policy: Arc::default(),
            users: UserTable::default(),
            user_meta: imbl::HashMap::new(),
            res_hot: PagedVec::default(),
            res_names: NameList::default(),
            res_extra: PagedVec::default(),
            res_keys: Vec::new(),
            org_role_users: imbl::HashMap::new(),
            org_type_res: imbl::HashMap::new(),
            org_grants: PagedVec::default(),
            counts: Counts::default(),
            urls: Arc::default(),
            ignored: Arc::default(),
            query_aux: Arc::default(),
            cond_holds: Arc::default(),
            cond_grants: 0,
            next_span: 0,
            renumber: true,
        }
    }

    /// The build's end, once users, resources and assignments are in: `snapshot`'s policy
    /// items, grants and URL rules (its large lists are not read), then the policy, the spans
    /// and the spare capacity.
    fn finish(&mut self, snapshot: &Snapshot) {
        self.items = Arc::new(PolicyItems {
            orgs: snapshot.orgs.clone(),
            resource_types: snapshot.resource_types.clone(),
            roles: snapshot.roles.clone(),
            menus: snapshot.menus.clone(),
            rules: snapshot.rules.clone(),
        });
        self.urls = Arc::new(UrlRules::build(snapshot.url_mappings.clone()));
        for g in &snapshot.role_grants {
            self.upsert_grant(g);
        }
        self.counts.url_mappings = self.urls.items.len();
        self.rebuild_policy();
        self.number_forest();
        self.shrink();
    }

    /// Drops the spare capacity insertion left behind; a full build does it once at the end.
    fn shrink(&mut self) {
        let n = &mut self.names;
        for i in [&mut n.orgs, &mut n.types, &mut n.actions, &mut n.roles, &mut n.users] {
            i.shrink();
        }
        for m in &mut self.res_keys {
            m.shrink(&self.res_names);
        }
        self.res_names.shrink();
        for i in 0..self.res_extra.len() {
            if let Some(Some(rec)) = self.res_extra.get_mut(i) {
                let rec = Arc::make_mut(rec);
                rec.grants.shrink_to_fit();
                rec.holders.shrink_to_fit();
            }
        }
    }

    /// The next version: this one with the batch applied, all or nothing. The result equals
    /// `Index::build` of the document with the batch's ops applied (model.md §4).
    pub fn apply(&self, batch: &DeltaBatch) -> Result<Index, ApplyError> {
        if batch.from_version != self.version {
            return Err(ApplyError::VersionGap {
                from: batch.from_version,
                active: self.version,
            });
        }
        let mut next = self.clone();
        next.ignored = Arc::default();
        next.query_aux = Arc::default();
        next.cond_holds = Arc::default();
        let mut policy_changed = false;
        for op in &batch.ops {
            policy_changed |= next.apply_op(op);
        }
        next.apply_url_ops(&batch.ops);
        if policy_changed {
            next.rebuild_policy();
        }
        if next.renumber {
            next.number_forest();
        }
        next.version = batch.to_version;
        Ok(next)
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether some grant carries a `when`.
    pub fn conditional_grants(&self) -> bool {
        self.cond_grants > 0
    }

    /// Whether any decision may evaluate a condition: the policy has conditional permissions or
    /// rules, or some grant has a `when`.
    pub fn has_conditions(&self) -> bool {
        self.policy.conditional() || self.cond_grants > 0
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    pub fn policy_items(&self) -> &PolicyItems {
        &self.items
    }

    fn rebuild_policy(&mut self) {
        let items = &self.items;
        self.counts.orgs = items.orgs.len();
        self.counts.resource_types = items.resource_types.len();
        self.counts.roles = items.roles.len();
        self.counts.menus = items.menus.len();
        self.counts.rules = items.rules.len();
        self.policy = Arc::new(Policy::build(items, &mut self.names));
    }

    /// Applies one op; true when it changed the policy part.
    fn apply_op(&mut self, op: &Op) -> bool {
        match op {
            Op::Upsert(item) => match item {
                Item::User(u) => self.upsert_user(u),
                Item::Resource(r) => self.upsert_resource(r),
                Item::RoleAssignment(a) => self.upsert_assignment(a),
                Item::RoleGrant(g) => self.upsert_grant(g),
                Item::Org(v) => {
                    put(&mut Arc::make_mut(&mut self.items).orgs, v.clone(), |x| x.key == v.key);
                    return true;
                }
                Item::ResourceType(v) => {
                    put(&mut Arc::make_mut(&mut self.items).resource_types, v.clone(), |x| {
                        x.key == v.key
                    });
                    return true;
                }
                Item::Role(v) => {
                    put(&mut Arc::make_mut(&mut self.items).roles, v.clone(), |x| {
                        x.key == v.key && x.org == v.org
                    });
                    return true;
                }
                Item::Menu(v) => {
                    put(&mut Arc::make_mut(&mut self.items).menus, v.clone(), |x| {
                        x.platform == v.platform && x.code == v.code
                    });
                    return true;
                }
                Item::Rule(v) => {
                    put(&mut Arc::make_mut(&mut self.items).rules, v.clone(), |x| x.key == v.key);
                    return true;
                }
                // `apply_url_ops`, once per batch.
                Item::UrlMapping(_) => {}
            },
            Op::Delete(id) => match id {
                Identity::User { key } => self.delete_user(key),
                Identity::Resource { resource_type, key } => self.delete_resource(resource_type, key),
                Identity::RoleAssignment(a) => self.delete_assignment(a),
                Identity::RoleGrant { org, role, resource } => self.delete_grant(org, role, resource),
                Identity::Org { key } => {
                    Arc::make_mut(&mut self.items).orgs.retain(|x| &x.key != key);
                    return true;
                }
                Identity::ResourceType { key } => {
                    Arc::make_mut(&mut self.items).resource_types.retain(|x| &x.key != key);
                    return true;
                }
                Identity::Role { key, org } => {
                    Arc::make_mut(&mut self.items)
                        .roles
                        .retain(|x| !(&x.key == key && &x.org == org));
                    return true;
                }
                Identity::Menu { platform, code } => {
                    Arc::make_mut(&mut self.items)
                        .menus
                        .retain(|x| !(&x.platform == platform && &x.code == code));
                    return true;
                }
                Identity::Rule { key } => {
                    Arc::make_mut(&mut self.items).rules.retain(|x| &x.key != key);
                    return true;
                }
                Identity::UrlMapping { .. } => {}
            },
        }
        false
    }

    /// The resource id of `type:key`, whether or not the instance exists.
    #[inline]
    pub fn lookup_res(&self, resource_type: &str, key: &str) -> Option<u32> {
        self.lookup_res_in(self.names.types.get(resource_type)?, key)
    }

    /// `lookup_res` with the type's id already known.
    #[inline]
    pub(crate) fn lookup_res_in(&self, t: u32, key: &str) -> Option<u32> {
        self.res_keys.get(t as usize)?.get(key, &self.res_names)
    }

    /// Everything known of resource `id`, `None` for an id never handed out.
    #[inline]
    pub(crate) fn res(&self, id: u32) -> Option<ResRec<'_>> {
        let hot = self.res_hot.get(id as usize)?;
        let extra = self.res_extra(id);
        Some(ResRec {
            resource_type: hot.resource_type,
            key: self.res_names.name(id),
            item: self.item_of(hot, extra),
            grants: extra.map_or(&[], |e| &e.grants),
            holders: extra.map_or(&[], |e| &e.holders),
        })
    }

    #[inline]
    fn res_extra(&self, id: u32) -> Option<&ResExtra> {
        self.res_extra.get(id as usize)?.as_deref()
    }

    /// The grants on resource `id`.
    #[inline]
    pub(crate) fn res_grants(&self, id: u32) -> &[GrantRec] {
        self.res_extra(id).map_or(&[], |e| &e.grants)
    }

    /// The instance assignments on resource `id`, as (user id, org id, role-name id), sorted.
    #[inline]
    pub(crate) fn res_holders(&self, id: u32) -> &[(u32, u32, u32)] {
        self.res_extra(id).map_or(&[], |e| &e.holders)
    }

    /// Resource ids handed out (whether or not their instances exist).
    #[inline]
    pub(crate) fn res_count(&self) -> u32 {
        self.res_hot.len() as u32
    }

    fn item_of<'a>(&'a self, hot: &'a ResHot, extra: Option<&'a ResExtra>) -> Option<ResItem<'a>> {
        if hot.org == NONE {
            return None;
        }
        let parents = match hot.parent {
            NONE => &[][..],
            ResHot::MANY => extra.map_or(&[][..], |e| &e.parents),
            _ => std::slice::from_ref(&hot.parent),
        };
        Some(ResItem {
            org: hot.org,
            parents,
            attributes: extra.and_then(|e| e.attributes.as_deref()),
        })
    }

    #[inline]
    pub(crate) fn user(&self, key: &str) -> Option<UserRec<'_>> {
        self.users.get(self.names.users.get(key)?)
    }

    /// The user item of user `id` when it says more than the key.
    pub(crate) fn user_meta(&self, id: u32) -> Option<&User> {
        self.user_meta.get(&id).map(|u| &**u)
    }

    /// An instance that exists for decisions: in the document, of a known type, in a known org.
    #[inline]
    pub(crate) fn instance(&self, id: u32) -> Option<ResItem<'_>> {
        let hot = self.instance_hot(id)?;
        self.item_of(hot, self.res_extra(id))
    }

    /// The flat entry of instance `id`, when the instance exists for decisions (as `instance`).
    #[inline]
    pub(crate) fn instance_hot(&self, id: u32) -> Option<&ResHot> {
        let hot = self.res_hot.get(id as usize)?;
        (hot.org != NONE && self.policy.type_known(hot.resource_type) && self.policy.org_known(hot.org)).then_some(hot)
    }

    /// `type:key` of a resource id.
    pub fn res_name(&self, id: u32) -> String {
        match self.res_hot.get(id as usize) {
            Some(h) => format!("{}:{}", self.names.types.name(h.resource_type), self.res_names.name(id)),
            None => String::new(),
        }
    }

    /// Users holding role-name `role` org-wide in `org` (direct assignments only).
    pub fn org_role_users(&self, org: &str, role: &str) -> Option<&RoaringBitmap> {
        let key = (self.names.orgs.get(org)?, self.names.roles.get(role)?);
        self.org_role_users.get(&key).map(|b| &**b)
    }

    /// Resource ids of the instances of `resource_type` in `org`.
    pub fn org_type_instances(&self, org: &str, resource_type: &str) -> Option<&RoaringBitmap> {
        let key = (self.names.orgs.get(org)?, self.names.types.get(resource_type)?);
        self.org_type_res.get(&key).map(|b| &**b)
    }
}
