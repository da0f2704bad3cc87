//! The compiled policy: org ancestry, resource types and their actions, roles resolved with
//! their `extends` closure and permission bitsets. Small next to the facts, so it is rebuilt
//! whole whenever an org, resource type, role or menu changes.

use super::paged::Interner;
use super::{Ignored, NONE};
use crate::cond::Condition;
use crate::model::{Attributes, Menu, Org, ResourceType, Role, Rule};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Wildcard marker in compiled grant patterns.
pub const STAR: u32 = u32::MAX - 1;

/// The policy-shaped items of a snapshot, in document order.
#[derive(Clone, Debug, Default)]
pub struct PolicyItems {
    pub orgs: Vec<Org>,
    pub resource_types: Vec<ResourceType>,
    pub roles: Vec<Role>,
    pub menus: Vec<Menu>,
    pub rules: Vec<Rule>,
}

/// The interners every part of the index shares.
#[derive(Clone, Debug, Default)]
pub struct Names {
    pub orgs: Interner,
    pub types: Interner,
    pub actions: Interner,
    pub roles: Interner,
    pub users: Interner,
}

/// One role, compiled.
#[derive(Clone, Debug)]
pub struct CompiledRole {
    /// Role-name id.
    pub name: u32,
    /// Org id for an org-scoped role.
    pub org: Option<u32>,
    /// Position in `PolicyItems::roles`.
    pub item: usize,
}

/// A role's permission entry with a `when` (model.md §5).
#[derive(Clone, Debug)]
pub struct CondEntry {
    /// The compiled role whose own entry it is (not one that reaches it through `extends`).
    pub role: u32,
    /// Its position in that role's `permissions`.
    pub entry: usize,
    pub cond: Arc<Condition>,
}

/// An attribute rule, compiled.
#[derive(Clone, Debug)]
pub struct CompiledRule {
    /// Position in `PolicyItems::rules`.
    pub item: usize,
    /// The org it holds in (with the orgs below it); `None`: every org.
    pub org: Option<u32>,
    /// The permission ids it grants, sorted.
    pub perms: Box<[u32]>,
    pub cond: Arc<Condition>,
}

/// A type's actions as (action id, permission id), sorted by action id.
type Actions = Box<[(u32, u32)]>;

#[derive(Debug, Default)]
pub struct Policy {
    org_known: Vec<bool>,
    /// Per org id: the sorted ids of `OrgAnc(o)` (the org itself included).
    org_anc: Vec<Box<[u32]>>,
    /// Per type id: its actions as (action id, permission id), sorted; `None` for unknown types.
    type_actions: Vec<Option<Actions>>,
    /// Per permission id: (type id, action id).
    pub perms: Vec<(u32, u32)>,
    pub roles: Vec<CompiledRole>,
    /// Per role-name id: the global role with that key.
    global_role: Vec<u32>,
    /// Per role-name id: whether some org-scoped role has that key.
    name_scoped: Vec<bool>,
    scoped_role: HashMap<(u32, u32), u32>,
    /// Bitset words per role.
    words: usize,
    /// Per role, the permissions of `Expand({r})`, `words` u64s each.
    role_perms: Vec<u64>,
    /// Per role, the sorted ids of `Expand({r})`.
    role_expand: Vec<Box<[u32]>>,
    /// Conditional permission entries of every role.
    pub cond_entries: Vec<CondEntry>,
    /// Per role, the conditional entries of `Expand({r})` as (permission id, entry id), sorted.
    role_cond: Vec<Box<[(u32, u32)]>>,
    pub rules: Vec<CompiledRule>,
    /// Per org id, its position in `PolicyItems::orgs` (`NONE` for an org with no item).
    org_item: Vec<u32>,
    pub ignored: Vec<Ignored>,
}

impl Policy {
    #[inline]
    pub fn org_known(&self, org: u32) -> bool {
        self.org_known.get(org as usize).copied().unwrap_or(false)
    }

    #[inline]
    pub fn org_anc(&self, org: u32) -> &[u32] {
        self.org_anc.get(org as usize).map_or(&[], |a| a)
    }

    #[inline]
    pub fn type_known(&self, t: u32) -> bool {
        matches!(self.type_actions.get(t as usize), Some(Some(_)))
    }

    pub fn type_actions(&self, t: u32) -> &[(u32, u32)] {
        match self.type_actions.get(t as usize) {
            Some(Some(a)) => a,
            _ => &[],
        }
    }

    /// The permission id of (type, action), if the type has that action.
    #[inline]
    pub fn perm(&self, t: u32, action: u32) -> Option<u32> {
        let actions = self.type_actions.get(t as usize)?.as_deref()?;
        actions.iter().find(|(a, _)| *a == action).map(|(_, p)| *p)
    }

    /// model.md "Role resolution": the role `name` in scope org `org`.
    #[inline]
    pub fn resolve(&self, org: u32, name: u32) -> Option<u32> {
        if self.name_scoped.get(name as usize).copied().unwrap_or(false)
            && let Some(r) = self.scoped_role.get(&(org, name))
        {
            return Some(*r);
        }
        self.global_role.get(name as usize).copied().filter(|r| *r != NONE)
    }

    /// Whether some role in `Expand({role})` permits `perm`.
    #[inline]
    pub fn permits(&self, role: u32, perm: u32) -> bool {
        let word = role as usize * self.words + (perm as usize >> 6);
        self.role_perms
            .get(word)
            .is_some_and(|w| w & (1u64 << (perm & 63)) != 0)
    }

    /// Whether any role has a conditional permission or any rule exists: without either,
    /// decisions never evaluate a role condition or a rule.
    #[inline]
    pub fn conditional(&self) -> bool {
        !self.cond_entries.is_empty() || !self.rules.is_empty()
    }

    /// The conditional entries of `Expand({role})` that name `perm`, as entry ids.
    pub fn cond_entries_for(&self, role: u32, perm: u32) -> impl Iterator<Item = u32> + '_ {
        let list = self.role_cond.get(role as usize).map_or(&[][..], |l| &l[..]);
        let start = list.partition_point(|&(p, _)| p < perm);
        list[start..]
            .iter()
            .take_while(move |&&(p, _)| p == perm)
            .map(|&(_, e)| e)
    }

    /// Whether some role of `Expand({role})` has a conditional entry for `perm`.
    pub fn may_permit_when(&self, role: u32, perm: u32) -> bool {
        self.cond_entries_for(role, perm).next().is_some()
    }

    /// The org item of org id `o`, for its attributes.
    pub fn org_attributes<'a>(&self, o: u32, items: &'a PolicyItems) -> Option<&'a Attributes> {
        let i = *self.org_item.get(o as usize)?;
        items.orgs.get(i as usize)?.attributes.as_ref()
    }

    /// `Expand({role})`, sorted.
    #[inline]
    pub fn expand(&self, role: u32) -> &[u32] {
        self.role_expand.get(role as usize).map_or(&[], |e| e)
    }

    pub fn build(items: &PolicyItems, names: &mut Names) -> Policy {
        let mut p = Policy::default();
        p.build_orgs(&items.orgs, names);
        p.build_types(&items.resource_types, names);
        p.build_roles(items, names);
        p.build_rules(&items.rules, names);
        p.check_menus(items);
        p
    }

    fn build_rules(&mut self, rules: &[Rule], names: &Names) {
        for (i, rule) in rules.iter().enumerate() {
            let who = format!("rule={}", rule.key);
            let org = match &rule.org {
                None => None,
                Some(o) => match names.orgs.get(o).filter(|id| self.org_known(*id)) {
                    Some(id) => Some(id),
                    None => {
                        self.ignored
                            .push(Ignored::new("rule", who, format!("org `{o}` is not a known org")));
                        continue;
                    }
                },
            };
            let cond = match Condition::compile_shared(&rule.when) {
                Ok(c) => c,
                Err(e) => {
                    self.ignored
                        .push(Ignored::new("rule", who, format!("condition does not compile: {e}")));
                    continue;
                }
            };
            let mut perms = Vec::new();
            for perm in &rule.permissions {
                let ids = self.perms_of(perm, names);
                if ids.is_empty() {
                    self.ignored.push(Ignored::new(
                        "rule",
                        who.clone(),
                        format!("permission `{perm}` names an unknown type or action"),
                    ));
                }
                perms.extend(ids);
            }
            perms.sort_unstable();
            perms.dedup();
            self.rules.push(CompiledRule {
                item: i,
                org,
                perms: perms.into_boxed_slice(),
                cond,
            });
        }
    }

    fn build_orgs(&mut self, orgs: &[Org], names: &mut Names) {
        let ids: Vec<u32> = orgs.iter().map(|o| names.orgs.intern(&o.key)).collect();
        let n = names.orgs.len();
        self.org_known = vec![false; n];
        self.org_item = vec![NONE; n];
        for (i, &id) in ids.iter().enumerate() {
            self.org_item[id as usize] = i as u32;
        }
        let mut parent = vec![NONE; n];
        for &id in &ids {
            self.org_known[id as usize] = true;
        }
        for (org, &id) in orgs.iter().zip(&ids) {
            if let Some(pk) = &org.parent {
                match names.orgs.get(pk).filter(|p| self.org_known(*p)) {
                    Some(pid) => parent[id as usize] = pid,
                    None => self.ignored.push(Ignored::new(
                        "org",
                        format!("org={}", org.key),
                        format!("parent `{pk}` is not a known org"),
                    )),
                }
            }
        }
        self.org_anc = vec![Box::default(); n];
        for &id in &ids {
            let mut anc = vec![id];
            let mut cur = parent[id as usize];
            while cur != NONE && !anc.contains(&cur) {
                anc.push(cur);
                cur = parent[cur as usize];
            }
            anc.sort_unstable();
            self.org_anc[id as usize] = anc.into_boxed_slice();
        }
    }

    fn build_types(&mut self, types: &[ResourceType], names: &mut Names) {
        let mut per_type: Vec<(u32, Vec<(u32, u32)>)> = Vec::with_capacity(types.len());
        for rt in types {
            let t = names.types.intern(&rt.key);
            let mut actions: Vec<(u32, u32)> = Vec::with_capacity(rt.actions.len());
            for a in &rt.actions {
                let aid = names.actions.intern(a);
                if !actions.iter().any(|(x, _)| *x == aid) {
                    actions.push((aid, self.perms.len() as u32));
                    self.perms.push((t, aid));
                }
            }
            per_type.push((t, actions));
        }
        self.type_actions = vec![None; names.types.len()];
        for (t, mut actions) in per_type {
            actions.sort_unstable();
            self.type_actions[t as usize] = Some(actions.into_boxed_slice());
        }
    }

    /// The permission ids one permission string names; unknown parts give none.
    fn perms_of(&self, perm: &str, names: &Names) -> Vec<u32> {
        let Some((t, a)) = perm.split_once(':') else {
            return Vec::new();
        };
        let action = if a == "*" { None } else { names.actions.get(a) };
        if a != "*" && action.is_none() {
            return Vec::new();
        }
        let types: Vec<u32> = if t == "*" {
            (0..self.type_actions.len() as u32).collect()
        } else {
            names.types.get(t).into_iter().collect()
        };
        let mut out = Vec::new();
        for ty in types {
            for &(aid, pid) in self.type_actions(ty) {
                if action.is_none_or(|x| x == aid) {
                    out.push(pid);
                }
            }
        }
        out
    }

    fn build_roles(&mut self, items: &PolicyItems, names: &mut Names) {
        let roles = &items.roles;
        for (i, role) in roles.iter().enumerate() {
            let name = names.roles.intern(&role.key);
            let org = role.org.as_deref().map(|o| names.orgs.intern(o));
            self.roles.push(CompiledRole { name, org, item: i });
        }
        let n_names = names.roles.len();
        self.global_role = vec![NONE; n_names];
        self.name_scoped = vec![false; n_names];
        for (id, r) in self.roles.iter().enumerate() {
            match r.org {
                None => self.global_role[r.name as usize] = id as u32,
                Some(org) => {
                    self.name_scoped[r.name as usize] = true;
                    self.scoped_role.insert((org, r.name), id as u32);
                }
            }
        }
        // Direct edges: own permissions and resolved `extends`.
        let n = self.roles.len();
        self.words = self.perms.len().div_ceil(64).max(1);
        let mut own = vec![0u64; n * self.words];
        let mut own_cond: Vec<Vec<(u32, u32)>> = vec![Vec::new(); n];
        let mut edges: Vec<Vec<u32>> = vec![Vec::new(); n];
        for (id, (role, compiled)) in roles.iter().zip(&self.roles).enumerate() {
            let who = match &role.org {
                Some(o) => format!("role={} org={o}", role.key),
                None => format!("role={}", role.key),
            };
            if let Some(org) = compiled.org
                && !self.org_known(org)
            {
                self.ignored
                    .push(Ignored::new("role", who.clone(), "org is not a known org".into()));
            }
            for (entry, perm) in role.permissions.iter().enumerate() {
                let ids = self.perms_of(perm.as_str(), names);
                if ids.is_empty() {
                    self.ignored.push(Ignored::new(
                        "role",
                        who.clone(),
                        format!("permission `{}` names an unknown type or action", perm.as_str()),
                    ));
                }
                match &perm.when {
                    None => {
                        for pid in ids {
                            own[id * self.words + (pid as usize >> 6)] |= 1u64 << (pid & 63);
                        }
                    }
                    Some(when) => match Condition::compile_shared(when) {
                        Ok(cond) => {
                            let e = self.cond_entries.len() as u32;
                            self.cond_entries.push(CondEntry {
                                role: id as u32,
                                entry,
                                cond,
                            });
                            own_cond[id].extend(ids.into_iter().map(|pid| (pid, e)));
                        }
                        Err(err) => self.ignored.push(Ignored::new(
                            "role",
                            who.clone(),
                            format!("permissions[{entry}]: condition does not compile: {err}"),
                        )),
                    },
                }
            }
            for ext in &role.extends {
                let target = names.roles.get(ext).and_then(|name| match compiled.org {
                    Some(org) => self.resolve(org, name),
                    None => self.global_role.get(name as usize).copied().filter(|r| *r != NONE),
                });
                match target {
                    Some(t) => edges[id].push(t),
                    None => self.ignored.push(Ignored::new(
                        "role",
                        who.clone(),
                        format!("extends `{ext}`, which does not resolve"),
                    )),
                }
            }
        }
        // Closures by reachability; cycles simply make their members reach each other.
        self.role_perms = vec![0u64; n * self.words];
        self.role_expand = Vec::with_capacity(n);
        self.role_cond = Vec::with_capacity(n);
        let mut seen = vec![u32::MAX; n];
        for start in 0..n {
            let mut reach = vec![start as u32];
            seen[start] = start as u32;
            let mut i = 0;
            while let Some(&r) = reach.get(i) {
                i += 1;
                for &next in &edges[r as usize] {
                    if seen[next as usize] != start as u32 {
                        seen[next as usize] = start as u32;
                        reach.push(next);
                    }
                }
            }
            let mut conds: Vec<(u32, u32)> = Vec::new();
            for &r in &reach {
                for w in 0..self.words {
                    self.role_perms[start * self.words + w] |= own[r as usize * self.words + w];
                }
                conds.extend_from_slice(&own_cond[r as usize]);
            }
            conds.sort_unstable();
            conds.dedup();
            self.role_cond.push(conds.into_boxed_slice());
            reach.sort_unstable();
            self.role_expand.push(reach.into_boxed_slice());
        }
    }

    fn check_menus(&mut self, items: &PolicyItems) {
        let codes: HashSet<(&str, &str)> = items
            .menus
            .iter()
            .map(|m| (m.platform.as_str(), m.code.as_str()))
            .collect();
        let any_code: HashSet<&str> = items.menus.iter().map(|m| m.code.as_str()).collect();
        for m in &items.menus {
            if let Some(parent) = &m.parent
                && !codes.contains(&(m.platform.as_str(), parent.as_str()))
            {
                self.ignored.push(Ignored::new(
                    "menu",
                    format!("platform={} code={}", m.platform, m.code),
                    format!("parent `{parent}` is not a menu of the same platform"),
                ));
            }
        }
        for role in &items.roles {
            for code in &role.menus {
                if !any_code.contains(code.as_str()) {
                    self.ignored.push(Ignored::new(
                        "role",
                        format!("role={}", role.key),
                        format!("menu `{code}` is not a known menu code"),
                    ));
                }
            }
        }
    }
}
