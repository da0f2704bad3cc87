//! The compiled, immutable index of one snapshot version, `decide()` and the queries. Pure
//! and synchronous: no tokio, hyper, clock or file access. Every key is interned to a dense
//! u32; facts live in paged copy-on-write vectors and roaring bitmaps, so `apply(batch)`
//! yields the next version sharing everything it does not touch.

mod decide;
mod dropin;
mod explain;
mod paged;
mod policy;
mod query;
mod spans;
#[cfg(test)]
mod tests;

pub use decide::{CondSite, Decision, Evidence, Query, Reason, Subject, Tried};
pub use dropin::{TenantInfo, UrlRules};
pub use explain::Explanation;
pub use paged::{Interner, KeyMap, PagedVec};
pub use policy::{Names, Policy, PolicyItems, STAR};
pub use query::{
    AssignmentFilter, AssignmentRow, DEFAULT_LIMIT, GroupNode, MAX_LIMIT, MAX_TREE_NODES, MenuNode, PermEntry,
    QueryError, RoleInfo, UserPermissions, UserPermissionsFilter, decode_cursor, encode_cursor, page_bitmap,
};

use crate::cond::Condition;
use crate::model::{
    self, Attributes, DeltaBatch, Identity, Item, Kind, Op, ResourceRef, Role, RoleAssignment, RoleGrant, Snapshot,
    User, put,
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

/// Facts about one user: metadata and their role assignments. 64 bytes, aligned to a cache
/// line, so reading a record loads one line and never two.
#[derive(Clone, Debug, Default)]
#[repr(align(64))]
pub struct UserRec {
    /// The document has a user item for this key.
    pub listed: bool,
    /// That item, when it says more than its key (most users are a key and nothing else, and
    /// the key is already interned: at 1M users that is ~150 MB not spent on copies).
    pub meta: Option<Box<User>>,
    /// Org-wide assignments as (org id, role-name id), sorted and unique.
    pub org_roles: Vec<(u32, u32)>,
    /// Instance assignments as (resource id, org id, role-name id), sorted and unique.
    pub inst_roles: Vec<(u32, u32, u32)>,
    /// Bit `o % 32` is set for every org `o` of `inst_roles`: `decide` reads the vector (a
    /// cache line of its own) only when the user may hold an instance role in the org.
    pub inst_orgs: u32,
}

impl UserRec {
    fn sync_inst_orgs(&mut self) {
        self.inst_orgs = self.inst_roles.iter().fold(0, |m, &(_, o, _)| m | 1 << (o % 32));
    }

    /// Whether the user may hold an instance role in org `o` (no false negatives).
    #[inline]
    pub fn may_hold_in(&self, o: u32) -> bool {
        self.inst_orgs & 1 << (o % 32) != 0
    }
}

/// A resource instance as the document has it.
#[derive(Clone, Debug)]
pub struct ResItem {
    pub org: u32,
    /// Parent resource ids in document order.
    pub parents: Box<[u32]>,
    pub attributes: Option<Box<Attributes>>,
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

/// Everything known under one `type:key`: the instance (if the document has it), the grants
/// on it and the instance assignments on it.
#[derive(Clone, Debug, Default)]
pub struct ResRec {
    pub resource_type: u32,
    pub key: Arc<str>,
    pub item: Option<ResItem>,
    pub grants: Vec<GrantRec>,
    /// Instance assignments on this resource as (user id, org id, role-name id), sorted.
    pub holders: Vec<(u32, u32, u32)>,
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
    /// Per user id, the record inline in its page: a lookup is one load less than through an
    /// `Arc` (a page copied for a delta clones its records' vectors).
    pub(crate) users: PagedVec<UserRec>,
    pub(crate) resources: PagedVec<Option<Arc<ResRec>>>,
    /// Per resource id: what the tree walk reads (see `ResHot`); kept in step with `resources`.
    res_hot: PagedVec<ResHot>,
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
        let mut ix = Index {
            version: snapshot.version,
            names: Names::default(),
            items: Arc::new(PolicyItems {
                orgs: snapshot.orgs.clone(),
                resource_types: snapshot.resource_types.clone(),
                roles: snapshot.roles.clone(),
                menus: snapshot.menus.clone(),
                rules: snapshot.rules.clone(),
            }),
            policy: Arc::default(),
            users: PagedVec::default(),
            resources: PagedVec::default(),
            res_hot: PagedVec::default(),
            res_keys: Vec::new(),
            org_role_users: imbl::HashMap::new(),
            org_type_res: imbl::HashMap::new(),
            org_grants: PagedVec::default(),
            counts: Counts::default(),
            urls: Arc::new(UrlRules::build(snapshot.url_mappings.clone())),
            ignored: Arc::default(),
            query_aux: Arc::default(),
            cond_holds: Arc::default(),
            cond_grants: 0,
            next_span: 0,
            renumber: true,
        };
        for u in &snapshot.users {
            ix.upsert_user(u);
        }
        for r in &snapshot.resources {
            ix.upsert_resource(r);
        }
        ix.bulk_assignments(&snapshot.role_assignments);
        for g in &snapshot.role_grants {
            ix.upsert_grant(g);
        }
        ix.counts.url_mappings = ix.urls.items.len();
        ix.rebuild_policy();
        ix.number_forest();
        ix.shrink();
        ix
    }

    /// Drops the spare capacity insertion left behind; a full build does it once at the end.
    fn shrink(&mut self) {
        let n = &mut self.names;
        for i in [&mut n.orgs, &mut n.types, &mut n.actions, &mut n.roles, &mut n.users] {
            i.shrink();
        }
        for m in &mut self.res_keys {
            m.shrink();
        }
        for i in 0..self.users.len() {
            if let Some(rec) = self.users.get_mut(i) {
                rec.org_roles.shrink_to_fit();
                rec.inst_roles.shrink_to_fit();
            }
        }
        for i in 0..self.resources.len() {
            if let Some(Some(rec)) = self.resources.get_mut(i) {
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

    fn user_mut(&mut self, key: &str) -> (u32, &mut UserRec) {
        let id = self.names.users.intern(key);
        (id, self.users.slot(id as usize))
    }

    /// The resource id of `type:key`, creating an empty record for a new one.
    fn res_id(&mut self, resource_type: &str, key: &str) -> u32 {
        ResIds {
            types: &mut self.names.types,
            res_keys: &mut self.res_keys,
            resources: &mut self.resources,
        }
        .id(resource_type, key)
    }

    fn res_ref(&mut self, reference: &str) -> u32 {
        ResIds {
            types: &mut self.names.types,
            res_keys: &mut self.res_keys,
            resources: &mut self.resources,
        }
        .reference(reference)
    }

    fn res_mut(&mut self, id: u32) -> Option<&mut ResRec> {
        self.resources.get_mut(id as usize)?.as_mut().map(Arc::make_mut)
    }

    fn upsert_user(&mut self, u: &User) {
        let (_, rec) = self.user_mut(&u.key);
        let added = !rec.listed;
        rec.listed = true;
        let says_more = u.email.is_some() || u.first_name.is_some() || u.last_name.is_some() || u.attributes.is_some();
        rec.meta = says_more.then(|| Box::new(u.clone()));
        self.counts.users += usize::from(added);
    }

    fn delete_user(&mut self, key: &str) {
        let Some(id) = self.names.users.get(key) else { return };
        if let Some(rec) = self.users.get_mut(id as usize)
            && rec.listed
        {
            rec.listed = false;
            rec.meta = None;
            self.counts.users -= 1;
        }
    }

    fn upsert_resource(&mut self, r: &model::Resource) {
        let id = self.res_id(&r.resource_type, &r.key);
        let org = self.names.orgs.intern(&r.org);
        let parents: Box<[u32]> = r.parents.iter().map(|p| self.res_ref(p)).collect();
        let Some(rec) = self.res_mut(id) else { return };
        let t = rec.resource_type;
        let old = rec.item.replace(ResItem {
            org,
            parents,
            attributes: r.attributes.clone().map(Box::new),
        });
        match old {
            Some(old) => bitmap_remove(&mut self.org_type_res, (old.org, t), id),
            None => self.counts.resources += 1,
        }
        bitmap_insert(&mut self.org_type_res, (org, t), id);
        self.sync_hot(id);
    }

    /// Recomputes resource `id`'s `ResHot` from its record, and its span when its link up
    /// changed (`spans.rs`).
    fn sync_hot(&mut self, id: u32) {
        let old = self.res_hot.get(id as usize).copied().unwrap_or_default();
        let mut hot = match self.res(id) {
            None => ResHot::default(),
            Some(rec) => {
                let (org, parent) = match &rec.item {
                    None => (NONE, NONE),
                    Some(item) => (
                        item.org,
                        match &item.parents[..] {
                            [] => NONE,
                            [one] => *one,
                            _ => ResHot::MANY,
                        },
                    ),
                };
                ResHot {
                    org,
                    resource_type: rec.resource_type,
                    parent,
                    grants: !rec.grants.is_empty(),
                    ..ResHot::default()
                }
            }
        };
        (hot.pre, hot.end, hot.kids) = (old.pre, old.end, old.kids);
        if hot.parent != old.parent || (hot.parent == NONE && old.pre == NONE) {
            self.place_moved(id, &old, &mut hot);
        }
        if self.res_hot.get(id as usize) != Some(&hot) {
            *self.res_hot.slot(id as usize) = hot;
        }
    }

    fn delete_resource(&mut self, resource_type: &str, key: &str) {
        let Some(id) = self.lookup_res(resource_type, key) else {
            return;
        };
        let Some(rec) = self.res_mut(id) else { return };
        let t = rec.resource_type;
        if let Some(old) = rec.item.take() {
            self.counts.resources -= 1;
            bitmap_remove(&mut self.org_type_res, (old.org, t), id);
        }
        self.sync_hot(id);
    }

    fn upsert_assignment(&mut self, a: &RoleAssignment) {
        let org = self.names.orgs.intern(&a.org);
        let role = self.names.roles.intern(&a.role);
        match &a.resource {
            None => {
                let (uid, rec) = self.user_mut(&a.user);
                if let Err(at) = rec.org_roles.binary_search(&(org, role)) {
                    rec.org_roles.insert(at, (org, role));
                    self.counts.role_assignments += 1;
                    bitmap_insert(&mut self.org_role_users, (org, role), uid);
                }
            }
            Some(reference) => {
                let res = self.res_ref(reference);
                let (uid, rec) = self.user_mut(&a.user);
                if let Err(at) = rec.inst_roles.binary_search(&(res, org, role)) {
                    rec.inst_roles.insert(at, (res, org, role));
                    rec.sync_inst_orgs();
                    self.counts.role_assignments += 1;
                    if let Some(r) = self.res_mut(res)
                        && let Err(at) = r.holders.binary_search(&(uid, org, role))
                    {
                        r.holders.insert(at, (uid, org, role));
                    }
                }
            }
        }
    }

    /// All of a document's assignments at once, on an index that has none yet. Gives the same
    /// index as `upsert_assignment` of each in turn (ids handed out in the same order, the same
    /// sorted, de-duplicated vectors and bitmaps), but sorts the lot and builds every vector and
    /// bitmap once instead of inserting into them one at a time.
    fn bulk_assignments(&mut self, list: &[RoleAssignment]) {
        // Interned in document order, so ids come out as one upsert after another would give
        // them. Users are one namespace and orgs, roles and resources others: on a large
        // document the two halves run on two threads.
        let Index {
            names,
            res_keys,
            resources,
            ..
        } = self;
        let Names {
            orgs,
            roles,
            types,
            users,
            ..
        } = names;
        let user_ids = |users: &mut Interner| list.iter().map(|a| users.intern(&a.user)).collect::<Vec<u32>>();
        let mut res = ResIds {
            types,
            res_keys,
            resources,
        };
        let mut others = |res: &mut ResIds<'_>| {
            list.iter()
                .map(|a| {
                    let org = orgs.intern(&a.org);
                    let role = roles.intern(&a.role);
                    (org, role, a.resource.as_deref().map(|r| res.reference(r)))
                })
                .collect::<Vec<(u32, u32, Option<u32>)>>()
        };
        let (uids, rest) = if list.len() >= PARALLEL_BUILD {
            let (uids, rest) = std::thread::scope(|scope| {
                let half = scope.spawn(|| user_ids(users));
                let rest = others(&mut res);
                (half.join().ok(), rest)
            });
            // A panic cannot happen there; should it, interning again gives the same ids.
            (uids.unwrap_or_else(|| user_ids(users)), rest)
        } else {
            (user_ids(users), others(&mut res))
        };
        // (user, org, role) and (user, resource, org, role).
        let mut org_wide: Vec<(u32, u32, u32)> = Vec::with_capacity(list.len());
        let mut on_instance: Vec<(u32, u32, u32, u32)> = Vec::new();
        for (&uid, &(org, role, res)) in uids.iter().zip(&rest) {
            match res {
                None => org_wide.push((uid, org, role)),
                Some(res) => on_instance.push((uid, res, org, role)),
            }
        }
        drop((uids, rest));
        // Every user an assignment names has a record, as `user_mut` would have made it.
        if let Some(last) = self.names.users.len().checked_sub(1) {
            self.users.slot(last);
        }
        org_wide.sort_unstable();
        org_wide.dedup();
        on_instance.sort_unstable();
        on_instance.dedup();
        self.counts.role_assignments += org_wide.len() + on_instance.len();

        for run in org_wide.chunk_by(|a, b| a.0 == b.0) {
            let Some(&(uid, ..)) = run.first() else { continue };
            if let Some(rec) = self.users.get_mut(uid as usize) {
                rec.org_roles = run.iter().map(|&(_, org, role)| (org, role)).collect();
            }
        }
        for run in on_instance.chunk_by(|a, b| a.0 == b.0) {
            let Some(&(uid, ..)) = run.first() else { continue };
            if let Some(rec) = self.users.get_mut(uid as usize) {
                rec.inst_roles = run.iter().map(|&(_, res, org, role)| (res, org, role)).collect();
                rec.sync_inst_orgs();
            }
        }

        org_wide.sort_unstable_by_key(|&(uid, org, role)| (org, role, uid));
        for run in org_wide.chunk_by(|a, b| (a.1, a.2) == (b.1, b.2)) {
            let Some(&(_, org, role)) = run.first() else { continue };
            let uids = run.iter().map(|&(uid, ..)| uid);
            // Sorted and unique by construction; `collect` would give the same, only slower.
            let users = RoaringBitmap::from_sorted_iter(uids.clone()).unwrap_or_else(|_| uids.collect());
            match self.org_role_users.get_mut(&(org, role)) {
                Some(b) => *Arc::make_mut(b) |= users,
                None => {
                    self.org_role_users.insert((org, role), Arc::new(users));
                }
            }
        }

        on_instance.sort_unstable_by_key(|&(uid, res, org, role)| (res, uid, org, role));
        for run in on_instance.chunk_by(|a, b| a.1 == b.1) {
            let Some(&(_, res, ..)) = run.first() else { continue };
            if let Some(r) = self.res_mut(res) {
                r.holders = run.iter().map(|&(uid, _, org, role)| (uid, org, role)).collect();
            }
        }
    }

    fn delete_assignment(&mut self, a: &RoleAssignment) {
        let (Some(uid), Some(org), Some(role)) = (
            self.names.users.get(&a.user),
            self.names.orgs.get(&a.org),
            self.names.roles.get(&a.role),
        ) else {
            return;
        };
        let res = match &a.resource {
            None => None,
            Some(reference) => {
                let r = ResourceRef::parse(reference);
                match r.and_then(|r| self.lookup_res(r.resource_type, r.key)) {
                    Some(id) => Some(id),
                    None => return,
                }
            }
        };
        let Some(rec) = self.users.get_mut(uid as usize) else {
            return;
        };
        match res {
            None => {
                if let Ok(at) = rec.org_roles.binary_search(&(org, role)) {
                    rec.org_roles.remove(at);
                    self.counts.role_assignments -= 1;
                    bitmap_remove(&mut self.org_role_users, (org, role), uid);
                }
            }
            Some(res) => {
                if let Ok(at) = rec.inst_roles.binary_search(&(res, org, role)) {
                    rec.inst_roles.remove(at);
                    rec.sync_inst_orgs();
                    self.counts.role_assignments -= 1;
                    if let Some(r) = self.res_mut(res)
                        && let Ok(at) = r.holders.binary_search(&(uid, org, role))
                    {
                        r.holders.remove(at);
                    }
                }
            }
        }
    }

    fn upsert_grant(&mut self, g: &RoleGrant) {
        let org = self.names.orgs.intern(&g.org);
        let role = self.names.roles.intern(&g.role);
        let patterns: Box<[(u32, u32)]> = g
            .actions
            .iter()
            .filter_map(|p| p.split_once(':'))
            .map(|(t, a)| {
                let t = if t == "*" { STAR } else { self.names.types.intern(t) };
                let a = if a == "*" { STAR } else { self.names.actions.intern(a) };
                (t, a)
            })
            .collect();
        let res = self.res_ref(&g.resource);
        if self.res(res).is_none() {
            return;
        }
        let when = g.when.as_deref().map(Condition::compile_or_never);
        let grant = GrantRec {
            org,
            role,
            patterns,
            when,
        };
        self.count_grant(&grant, 1);
        if grant.when.is_some() {
            self.cond_grants += 1;
        }
        let Some(rec) = self.res_mut(res) else { return };
        let old = match rec.grants.iter_mut().find(|x| x.org == org && x.role == role) {
            Some(slot) => Some(std::mem::replace(slot, grant)),
            None => {
                rec.grants.push(grant);
                self.counts.role_grants += 1;
                None
            }
        };
        if let Some(old) = old {
            self.count_grant(&old, -1);
            if old.when.is_some() {
                self.cond_grants -= 1;
            }
        }
        self.sync_hot(res);
    }

    /// Adds (`by` = 1) or removes (-1) a grant's kinds in its org's `org_grants`.
    fn count_grant(&mut self, g: &GrantRec, by: i64) {
        let kinds = self.org_grants.slot(g.org as usize);
        for &pattern in g.patterns.iter() {
            let key = (g.role, pattern);
            match kinds.binary_search_by_key(&key, |k| (k.role, k.pattern)) {
                Ok(at) => {
                    if let Some(k) = kinds.get_mut(at) {
                        k.count = (i64::from(k.count) + by).max(0) as u32;
                        if k.count == 0 {
                            kinds.remove(at);
                        }
                    }
                }
                Err(at) if by > 0 => kinds.insert(
                    at,
                    GrantKind {
                        role: g.role,
                        pattern,
                        count: by as u32,
                    },
                ),
                Err(_) => {}
            }
        }
    }

    /// The grant kinds of org `o`, sorted by (role-name id, pattern).
    #[inline]
    pub(crate) fn org_grants(&self, o: u32) -> &[GrantKind] {
        self.org_grants.get(o as usize).map_or(&[], |k| k)
    }

    fn delete_grant(&mut self, org: &str, role: &str, resource: &str) {
        let (Some(org), Some(role)) = (self.names.orgs.get(org), self.names.roles.get(role)) else {
            return;
        };
        let Some(res) = ResourceRef::parse(resource).and_then(|r| self.lookup_res(r.resource_type, r.key)) else {
            return;
        };
        let Some(rec) = self.res_mut(res) else { return };
        let Some(at) = rec.grants.iter().position(|x| x.org == org && x.role == role) else {
            return;
        };
        let old = rec.grants.remove(at);
        self.counts.role_grants -= 1;
        self.count_grant(&old, -1);
        if old.when.is_some() {
            self.cond_grants -= 1;
        }
        self.sync_hot(res);
    }

    /// The resource id of `type:key`, whether or not the instance exists.
    #[inline]
    pub fn lookup_res(&self, resource_type: &str, key: &str) -> Option<u32> {
        self.lookup_res_in(self.names.types.get(resource_type)?, key)
    }

    /// `lookup_res` with the type's id already known.
    #[inline]
    pub(crate) fn lookup_res_in(&self, t: u32, key: &str) -> Option<u32> {
        self.res_keys.get(t as usize)?.get(key)
    }

    #[inline]
    pub(crate) fn res(&self, id: u32) -> Option<&ResRec> {
        self.resources.get(id as usize)?.as_deref()
    }

    #[inline]
    pub(crate) fn user(&self, key: &str) -> Option<&UserRec> {
        let id = self.names.users.get(key)?;
        self.users.get(id as usize)
    }

    /// An instance that exists for decisions: in the document, of a known type, in a known org.
    #[inline]
    pub(crate) fn instance(&self, id: u32) -> Option<&ResItem> {
        let rec = self.res(id)?;
        let item = rec.item.as_ref()?;
        (self.policy.type_known(rec.resource_type) && self.policy.org_known(item.org)).then_some(item)
    }

    /// The flat entry of instance `id`, when the instance exists for decisions (as `instance`).
    #[inline]
    pub(crate) fn instance_hot(&self, id: u32) -> Option<&ResHot> {
        let hot = self.res_hot.get(id as usize)?;
        (hot.org != NONE && self.policy.type_known(hot.resource_type) && self.policy.org_known(hot.org)).then_some(hot)
    }

    /// `type:key` of a resource id.
    pub fn res_name(&self, id: u32) -> String {
        match self.res(id) {
            Some(r) => format!("{}:{}", self.names.types.name(r.resource_type), r.key),
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

    /// The items that can grant nothing, computed once per version on first use.
    pub fn ignored(&self) -> Arc<Vec<Ignored>> {
        self.ignored.get_or_init(|| Arc::new(self.compute_ignored())).clone()
    }

    fn compute_ignored(&self) -> Vec<Ignored> {
        let p = &*self.policy;
        let names = &self.names;
        let mut out = p.ignored.clone();
        let org_name = |o: u32| names.orgs.name(o).to_string();
        let role_name = |r: u32| names.roles.name(r).to_string();
        for (id, rec) in self.resources.iter().enumerate() {
            let Some(rec) = rec else { continue };
            let id = id as u32;
            let who = || format!("resource={}", self.res_name(id));
            if let Some(item) = &rec.item {
                if !p.type_known(rec.resource_type) {
                    out.push(Ignored::new(
                        "resource",
                        who(),
                        "type is not a known resource type".into(),
                    ));
                } else if !p.org_known(item.org) {
                    out.push(Ignored::new(
                        "resource",
                        who(),
                        format!("org `{}` is not a known org", org_name(item.org)),
                    ));
                } else {
                    for &parent in item.parents.iter() {
                        let why = match self.instance(parent) {
                            None => "is not a known instance",
                            Some(pi) if pi.org != item.org => "is in another org",
                            Some(_) => continue,
                        };
                        out.push(Ignored::new(
                            "resource",
                            who(),
                            format!("parent `{}` {why}", self.res_name(parent)),
                        ));
                    }
                }
            }
            let target = self.instance(id);
            for g in &rec.grants {
                let item = format!(
                    "org={} role={} resource={}",
                    org_name(g.org),
                    role_name(g.role),
                    self.res_name(id)
                );
                let why = if !p.org_known(g.org) {
                    Some("org is not a known org".to_string())
                } else if p.resolve(g.org, g.role).is_none() {
                    Some("role does not resolve in its org".to_string())
                } else {
                    match target {
                        None => Some("resource is not a known instance".to_string()),
                        Some(t) if t.org != g.org => Some("resource is in another org".to_string()),
                        Some(_) => None,
                    }
                };
                if let Some(why) = why {
                    out.push(Ignored::new("role_grant", item, why));
                }
                for &(t, a) in g.patterns.iter() {
                    let known = match (t, a) {
                        (STAR, STAR) => true,
                        (STAR, a) => p.perms.iter().any(|(_, x)| *x == a),
                        (t, STAR) => p.type_known(t),
                        (t, a) => p.perm(t, a).is_some(),
                    };
                    if !known {
                        out.push(Ignored::new(
                            "role_grant",
                            format!(
                                "org={} role={} resource={}",
                                org_name(g.org),
                                role_name(g.role),
                                self.res_name(id)
                            ),
                            "an action pattern names an unknown type or action".into(),
                        ));
                    }
                }
            }
        }
        for (uid, rec) in self.users.iter().enumerate() {
            let user = names.users.name(uid as u32);
            for &(org, role) in &rec.org_roles {
                let why = if !p.org_known(org) {
                    "org is not a known org"
                } else if p.resolve(org, role).is_none() {
                    "role does not resolve in its org"
                } else {
                    continue;
                };
                out.push(Ignored::new(
                    "role_assignment",
                    format!("user={user} role={} org={}", role_name(role), org_name(org)),
                    why.into(),
                ));
            }
            for &(res, org, role) in &rec.inst_roles {
                let why = if !p.org_known(org) {
                    "org is not a known org"
                } else if p.resolve(org, role).is_none() {
                    "role does not resolve in its org"
                } else {
                    match self.instance(res) {
                        None => "resource is not a known instance",
                        Some(i) if i.org != org => "resource is in another org",
                        Some(_) => continue,
                    }
                };
                out.push(Ignored::new(
                    "role_assignment",
                    format!(
                        "user={user} role={} org={} resource={}",
                        role_name(role),
                        org_name(org),
                        self.res_name(res)
                    ),
                    why.into(),
                ));
            }
        }
        out
    }

    /// The document this index holds. Orgs, resource types, roles and menus keep document
    /// order; the other kinds come in id order.
    pub fn to_snapshot(&self) -> Snapshot {
        let names = &self.names;
        let pattern = |(t, a): (u32, u32)| {
            let t = if t == STAR { "*" } else { names.types.name(t) };
            let a = if a == STAR { "*" } else { names.actions.name(a) };
            format!("{t}:{a}")
        };
        let mut s = Snapshot {
            format: 1,
            version: self.version,
            orgs: self.items.orgs.clone(),
            resource_types: self.items.resource_types.clone(),
            roles: self.items.roles.clone(),
            menus: self.items.menus.clone(),
            rules: self.items.rules.clone(),
            url_mappings: self.urls.items.clone(),
            ..Snapshot::default()
        };
        for (uid, rec) in self.users.iter().enumerate() {
            let user = names.users.name(uid as u32);
            if rec.listed {
                s.users.push(match &rec.meta {
                    Some(meta) => (**meta).clone(),
                    None => User {
                        key: user.into(),
                        email: None,
                        first_name: None,
                        last_name: None,
                        attributes: None,
                    },
                });
            }
            for &(org, role) in &rec.org_roles {
                s.role_assignments.push(RoleAssignment {
                    user: user.into(),
                    role: names.roles.name(role).into(),
                    org: names.orgs.name(org).into(),
                    resource: None,
                });
            }
            for &(res, org, role) in &rec.inst_roles {
                s.role_assignments.push(RoleAssignment {
                    user: user.into(),
                    role: names.roles.name(role).into(),
                    org: names.orgs.name(org).into(),
                    resource: Some(self.res_name(res)),
                });
            }
        }
        for (id, rec) in self.resources.iter().enumerate() {
            let Some(rec) = rec else { continue };
            if let Some(item) = &rec.item {
                s.resources.push(model::Resource {
                    resource_type: names.types.name(rec.resource_type).into(),
                    key: rec.key.to_string(),
                    org: names.orgs.name(item.org).into(),
                    parents: item.parents.iter().map(|p| self.res_name(*p)).collect(),
                    attributes: item.attributes.as_deref().cloned(),
                });
            }
            for g in &rec.grants {
                s.role_grants.push(RoleGrant {
                    org: names.orgs.name(g.org).into(),
                    role: names.roles.name(g.role).into(),
                    resource: self.res_name(id as u32),
                    actions: g.patterns.iter().map(|p| pattern(*p)).collect(),
                    when: g.when.as_ref().map(|c| c.source().to_owned()),
                });
            }
        }
        s
    }

    /// The role item of a compiled role id.
    pub fn role_item(&self, role: u32) -> Option<&Role> {
        let compiled = self.policy.roles.get(role as usize)?;
        self.items.roles.get(compiled.item)
    }

    /// Item counts per kind name, for status pages and metrics.
    pub fn counts_by_kind(&self) -> [(Kind, usize); 10] {
        let c = self.counts;
        [
            (Kind::Org, c.orgs),
            (Kind::ResourceType, c.resource_types),
            (Kind::Role, c.roles),
            (Kind::User, c.users),
            (Kind::Resource, c.resources),
            (Kind::RoleAssignment, c.role_assignments),
            (Kind::RoleGrant, c.role_grants),
            (Kind::Menu, c.menus),
            (Kind::Rule, c.rules),
            (Kind::UrlMapping, c.url_mappings),
        ]
    }
}

/// Documents with at least this many assignments are built on two threads.
const PARALLEL_BUILD: usize = 50_000;

/// The three tables a resource id lives in, borrowed apart from the rest of the index so the
/// bulk build can intern resources while another thread interns users.
struct ResIds<'a> {
    types: &'a mut Interner,
    res_keys: &'a mut Vec<KeyMap>,
    resources: &'a mut PagedVec<Option<Arc<ResRec>>>,
}

impl ResIds<'_> {
    /// The resource id of `type:key`, creating an empty record for a new one.
    fn id(&mut self, resource_type: &str, key: &str) -> u32 {
        let t = self.types.intern(resource_type);
        if self.res_keys.len() <= t as usize {
            self.res_keys.resize_with(t as usize + 1, KeyMap::default);
        }
        if let Some(id) = self.res_keys.get(t as usize).and_then(|m| m.get(key)) {
            return id;
        }
        let id = self.resources.len() as u32;
        if let Some(m) = self.res_keys.get_mut(t as usize) {
            m.insert(key, id);
        }
        self.resources.push(Some(Arc::new(ResRec {
            resource_type: t,
            key: Arc::from(key),
            ..ResRec::default()
        })));
        id
    }

    /// The resource id of a `type:key` reference (all of it the type when there is no `:`).
    fn reference(&mut self, reference: &str) -> u32 {
        let r = ResourceRef::parse(reference).unwrap_or(ResourceRef {
            resource_type: reference,
            key: "",
        });
        self.id(r.resource_type, r.key)
    }
}

fn bitmap_insert(map: &mut imbl::HashMap<(u32, u32), Arc<RoaringBitmap>>, key: (u32, u32), id: u32) {
    Arc::make_mut(map.entry(key).or_default()).insert(id);
}

fn bitmap_remove(map: &mut imbl::HashMap<(u32, u32), Arc<RoaringBitmap>>, key: (u32, u32), id: u32) {
    let now_empty = match map.get_mut(&key) {
        Some(b) => {
            let b = Arc::make_mut(b);
            b.remove(id);
            b.is_empty()
        }
        None => false,
    };
    if now_empty {
        map.remove(&key);
    }
}
