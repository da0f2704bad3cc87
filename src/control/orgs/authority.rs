//! Who may call what on the organisation faces when a request names its acting user
//! (`X-Permd-Actor`): seed 004's rules (superuser anywhere, admin in the same org, members see
//! only their own org), decided by permd's own engine on the project's index. Without an
//! actor the API key acts with its project's authority. See the module docs of `orgs` for
//! the roles that mean superuser, admin and member.

use crate::index::{AssignmentFilter, Index};
use crate::model::Snapshot;
use std::collections::BTreeSet;

/// The global role that makes its holder a superuser of every org of the project.
pub const SUPERUSER: &str = "superuser";
/// The role that makes its holder an admin of an org (and of the orgs below it).
pub const ADMIN: &str = "admin";
/// The role `POST /api/v1/organizations/{id}/users/{user_id}` gives.
pub const MEMBER: &str = "member";

/// The caller of a request.
pub enum Caller<'a> {
    /// An API key alone: the project's authority.
    Project,
    /// A named acting user, held to the rules.
    User {
        key: &'a str,
        superuser: bool,
        index: &'a Index,
    },
}

impl<'a> Caller<'a> {
    pub fn new(actor: Option<&'a str>, index: &'a Index, snapshot: &Snapshot) -> Caller<'a> {
        match actor {
            None => Caller::Project,
            Some(key) => Caller::User {
                key,
                superuser: is_superuser(index, snapshot, key),
                index,
            },
        }
    }

    /// Whether the caller may do anything anywhere (the project's key, or a superuser).
    pub fn is_superuser(&self) -> bool {
        match self {
            Caller::Project => true,
            Caller::User { superuser, .. } => *superuser,
        }
    }

    /// Whether the caller may see `org` (member of it, or superuser).
    pub fn sees(&self, org: &str) -> bool {
        match self {
            Caller::Project => true,
            Caller::User { key, superuser, index } => *superuser || !index.roles_for_user(key, org, true).is_empty(),
        }
    }

    /// Whether the caller administers `org` (admin of it or of an org above it, or superuser).
    pub fn administers(&self, org: &str) -> bool {
        match self {
            Caller::Project => true,
            Caller::User { key, superuser, index } => *superuser || is_admin(index, key, org),
        }
    }

    /// Whether the caller administers some org of the project.
    pub fn administers_any(&self) -> bool {
        match self {
            Caller::Project => true,
            Caller::User { key, superuser, index } => {
                *superuser || assignment_orgs(index, key).iter().any(|o| is_admin(index, key, o))
            }
        }
    }
}

fn is_admin(index: &Index, user: &str, org: &str) -> bool {
    index.roles_for_user(user, org, true).iter().any(|r| r == ADMIN)
}

/// The orgs in which `user` has an org-wide assignment.
fn assignment_orgs(index: &Index, user: &str) -> BTreeSet<String> {
    let filter = AssignmentFilter {
        users: vec![user.to_owned()],
        ..AssignmentFilter::default()
    };
    let (rows, _) = index.role_assignments(&filter, 0, usize::MAX);
    rows.into_iter()
        .filter(|r| r.resource_instance.is_none())
        .map(|r| r.tenant)
        .collect()
}

/// Whether the global role `superuser` is among `user`'s effective roles in some org. An org
/// that defines its own role `superuser` does not count (the name means that role there).
fn is_superuser(index: &Index, snapshot: &Snapshot, user: &str) -> bool {
    assignment_orgs(index, user).iter().any(|o| {
        let own = snapshot
            .roles
            .iter()
            .any(|r| r.key == SUPERUSER && r.org.as_deref() == Some(o.as_str()));
        !own && index.roles_for_user(user, o, true).iter().any(|r| r == SUPERUSER)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::Encoding;

    fn index(yaml: &str) -> (Snapshot, Index) {
        let s = Snapshot::load(yaml.as_bytes(), Encoding::Yaml).unwrap();
        let ix = Index::build(&s);
        (s, ix)
    }

    #[test]
    fn the_rules_come_from_the_engine() {
        let (s, ix) = index(
            "format: 1\nversion: 1\norgs: [{key: root}, {key: a, parent: root}, {key: b}, {key: c}]\n\
             roles: [{key: superuser, permissions: ['*:*']}, {key: admin}, {key: member},\n\
                     {key: boss, extends: [admin]}, {key: superuser, org: c}]\n\
             role_assignments:\n\
               - {user: su, role: superuser, org: b}\n\
               - {user: ra, role: admin, org: root}\n\
               - {user: eb, role: boss, org: b}\n\
               - {user: m, role: member, org: a}\n\
               - {user: fake, role: superuser, org: c}\n",
        );
        let c = |u: &'static str| Caller::new(Some(u), &ix, &s);
        assert!(c("su").is_superuser() && c("su").sees("a") && c("su").administers("c"));
        // An admin of root administers the org below it, not another tree.
        assert!(c("ra").administers("a") && c("ra").sees("a") && !c("ra").sees("b"));
        assert!(!c("ra").is_superuser() && c("ra").administers_any());
        // `extends` counts.
        assert!(c("eb").administers("b") && !c("eb").administers("a"));
        // A member sees its org only and administers nothing.
        assert!(c("m").sees("a") && !c("m").sees("root") && !c("m").administers("a"));
        assert!(!c("m").administers_any());
        // An org's own `superuser` role is not the global one.
        assert!(!c("fake").is_superuser() && c("fake").sees("c"));
        // Nobody: nothing.
        assert!(!c("nobody").sees("a") && !c("nobody").administers_any());
        assert!(Caller::new(None, &ix, &s).administers("b"));
    }
}
