//! One test per step and reason of model.md §2, on a small hand-written snapshot.
#![allow(clippy::unwrap_used)]

use super::{Index, Query, Reason, Subject};
use crate::model::{DeltaBatch, Encoding, Snapshot};

const DOC: &str = r#"
format: 1
version: 7
orgs:
  - {key: default}
  - {key: acme}
  - {key: acme-eu, parent: acme}
  - {key: globex}
  - {key: loop-a, parent: loop-b}
  - {key: loop-b, parent: loop-a}
resource_types:
  - {key: document, actions: [read, write, delete]}
  - {key: folder, actions: [read, write]}
  - {key: camera, actions: [play, export]}
  - {key: site, actions: [manage]}
roles:
  - {key: viewer, permissions: ["document:read", "folder:read"]}
  - {key: editor, permissions: ["document:write"], extends: [viewer]}
  - {key: guard, org: acme, permissions: []}
  - {key: viewer, org: globex, permissions: ["folder:read"]}
  - {key: superuser, permissions: ["*:*"]}
  - {key: ring-a, permissions: ["document:delete"], extends: [ring-b]}
  - {key: ring-b, permissions: [], extends: [ring-a]}
resources:
  - {type: folder, key: shared, org: acme}
  - {type: folder, key: inner, org: acme, parents: ["folder:shared"]}
  - {type: document, key: photo, org: acme, parents: ["folder:inner"]}
  - {type: document, key: stray, org: acme, parents: ["folder:gx"]}
  - {type: folder, key: gx, org: globex}
  - {type: document, key: g1, org: globex, parents: ["folder:gx"]}
  - {type: site, key: hq, org: acme}
  - {type: camera, key: cam1, org: acme, parents: ["site:hq"]}
  - {type: document, key: orphan, org: nowhere}
role_assignments:
  - {user: alice, role: editor, org: acme}
  - {user: bob, role: viewer, org: acme, resource: "folder:shared"}
  - {user: bob, role: viewer, org: acme, resource: "folder:gx"}
  - {user: carol, role: guard, org: acme}
  - {user: dave, role: viewer, org: globex}
  - {user: erin, role: ring-b, org: loop-a}
  - {user: frank, role: guard, org: globex}
role_grants:
  - {org: acme, role: guard, resource: "site:hq", actions: ["camera:play"]}
"#;

fn ix() -> Index {
    Index::build(&Snapshot::load(DOC.as_bytes(), Encoding::Yaml).unwrap())
}

fn user<'a>(u: &'a str, action: &'a str, t: &'a str, key: Option<&'a str>, org: Option<&'a str>) -> Query<'a> {
    Query {
        subject: Subject::User(u),
        action,
        resource_type: t,
        resource_key: key,
        org,
        group_type: None,
        request: None,
    }
}

fn reason(ix: &Index, q: Query<'_>) -> Reason {
    let d = ix.decide(&q);
    assert_eq!(d.allow, d.reason.allows());
    assert_eq!(d.version, 7);
    d.reason
}

#[test]
fn step1_unknown_org() {
    let ix = ix();
    assert_eq!(
        reason(&ix, user("alice", "read", "document", None, Some("nope"))),
        Reason::UnknownOrg
    );
    // The instance's org is unknown, so it does not exist: no org given resolves to `default`.
    assert_eq!(
        reason(&ix, user("alice", "read", "document", Some("orphan"), None)),
        Reason::NoMatchingGrant
    );
}

#[test]
fn step2_unknown_type_and_action() {
    let ix = ix();
    assert_eq!(
        reason(&ix, user("alice", "read", "video", None, Some("acme"))),
        Reason::UnknownResourceType
    );
    assert_eq!(
        reason(&ix, user("alice", "play", "document", None, Some("acme"))),
        Reason::UnknownAction
    );
}

#[test]
fn step3_tenant_isolation() {
    let ix = ix();
    // superuser-like access in one org never reaches an instance of another.
    assert_eq!(
        reason(&ix, user("alice", "read", "document", Some("g1"), Some("acme"))),
        Reason::TenantMismatch
    );
    assert_eq!(
        reason(&ix, user("dave", "read", "document", Some("photo"), Some("globex"))),
        Reason::TenantMismatch
    );
}

#[test]
fn step4_org_roles_with_hierarchy_and_extends() {
    let ix = ix();
    assert_eq!(
        reason(&ix, user("alice", "write", "document", Some("photo"), None)),
        Reason::OrgRole
    );
    // `extends`: editor holds viewer's read.
    assert_eq!(
        reason(&ix, user("alice", "read", "folder", Some("shared"), None)),
        Reason::OrgRole
    );
    // An org-wide role in acme flows down to acme-eu, not up or sideways.
    assert_eq!(
        reason(&ix, user("alice", "read", "document", None, Some("acme-eu"))),
        Reason::OrgRole
    );
    assert_eq!(
        reason(&ix, user("alice", "read", "document", None, Some("globex"))),
        Reason::NoMatchingGrant
    );
    // The org-scoped `viewer` of globex shadows the global one there: no document:read.
    assert_eq!(
        reason(&ix, user("dave", "read", "document", None, Some("globex"))),
        Reason::NoMatchingGrant
    );
    assert_eq!(
        reason(&ix, user("dave", "read", "folder", None, Some("globex"))),
        Reason::OrgRole
    );
    // Cycles in org parents and role extends are reachability, not errors.
    assert_eq!(
        reason(&ix, user("erin", "delete", "document", None, Some("loop-b"))),
        Reason::OrgRole
    );
    // A type-level check (no key, or a key naming no instance) stops after step 4.
    assert_eq!(
        reason(&ix, user("bob", "read", "document", Some("ghost"), Some("acme"))),
        Reason::NoMatchingGrant
    );
}

#[test]
fn step5_instance_roles_down_the_tree() {
    let ix = ix();
    assert_eq!(
        reason(&ix, user("bob", "read", "document", Some("photo"), None)),
        Reason::ResourceRole
    );
    assert_eq!(
        reason(&ix, user("bob", "write", "document", Some("photo"), None)),
        Reason::NoMatchingGrant
    );
    // A parent link into another org is ignored: bob's role on globex's folder does not reach.
    assert_eq!(
        reason(&ix, user("bob", "read", "document", Some("stray"), None)),
        Reason::NoMatchingGrant
    );
}

#[test]
fn step6_role_grants_and_scoped_roles() {
    let ix = ix();
    assert_eq!(
        reason(&ix, user("carol", "play", "camera", Some("cam1"), None)),
        Reason::RoleGrant
    );
    assert_eq!(
        reason(&ix, user("carol", "export", "camera", Some("cam1"), None)),
        Reason::NoMatchingGrant
    );
    // `guard` is scoped to acme: frank's assignment in globex does not resolve.
    assert_eq!(
        reason(&ix, user("frank", "play", "camera", Some("cam1"), Some("acme"))),
        Reason::NoMatchingGrant
    );
    let ignored = ix.ignored();
    assert!(
        ignored
            .iter()
            .any(|i| i.kind == "role_assignment" && i.item.contains("user=frank")),
        "{ignored:?}"
    );
}

#[test]
fn role_subjects_and_group_type_checks() {
    let ix = ix();
    let role = |r, action, t, key, org, group| Query {
        subject: Subject::Role(r),
        action,
        resource_type: t,
        resource_key: key,
        org,
        group_type: group,
        request: None,
    };
    assert_eq!(
        ix.decide(&role("editor", "read", "document", None, Some("acme"), None))
            .reason,
        Reason::OrgRole
    );
    assert_eq!(
        ix.decide(&role("guard", "play", "camera", Some("hq"), Some("acme"), Some("site")))
            .reason,
        Reason::RoleGrant
    );
    // A role subject skips step 5.
    assert_eq!(
        ix.decide(&role(
            "guard",
            "play",
            "camera",
            Some("hq"),
            Some("globex"),
            Some("site")
        ))
        .reason,
        Reason::TenantMismatch
    );
    assert_eq!(
        ix.decide(&role("nobody", "read", "document", None, Some("acme"), None))
            .reason,
        Reason::NoMatchingGrant
    );
    // At a node: "may carol play cameras in site hq?"
    let mut q = user("carol", "play", "camera", Some("hq"), None);
    q.group_type = Some("site");
    assert_eq!(reason(&ix, q), Reason::RoleGrant);
}

#[test]
fn explanations_name_the_evidence() {
    let ix = ix();
    let q = user("bob", "read", "document", Some("photo"), None);
    let e = ix.explain(&q, &ix.decide(&q));
    let a = e.assignment.unwrap();
    assert_eq!(
        (a.user.as_str(), a.role.as_str(), a.resource.as_deref()),
        ("bob", "viewer", Some("folder:shared"))
    );
    let q = user("carol", "play", "camera", Some("cam1"), None);
    let e = ix.explain(&q, &ix.decide(&q));
    assert_eq!(e.grant.unwrap().resource, "site:hq");
    let q = user("x", "read", "document", None, Some("nope"));
    let e = ix.explain(&q, &ix.decide(&q));
    assert_eq!((e.step, e.message.as_str()), (1, "org `nope` is not a known org"));
}

#[test]
fn apply_shares_untouched_data_and_leaves_the_old_version() {
    let old = ix();
    let line = br#"{"from_version": 7, "to_version": 8, "ops": [
        {"op": "delete", "kind": "role_assignment", "value": {"user": "alice", "role": "editor", "org": "acme"}},
        {"op": "upsert", "kind": "role_assignment", "value": {"user": "zoe", "role": "superuser", "org": "acme"}}]}"#;
    let new = old.apply(&DeltaBatch::from_json(line).unwrap()).unwrap();
    assert_eq!(
        reason(&old, user("alice", "write", "document", Some("photo"), None)),
        Reason::OrgRole
    );
    let d = new.decide(&user("alice", "write", "document", Some("photo"), None));
    assert_eq!((d.reason, d.version), (Reason::NoMatchingGrant, 8));
    assert_eq!(
        new.decide(&user("zoe", "delete", "document", Some("photo"), None))
            .reason,
        Reason::OrgRole
    );
    assert_eq!(new.counts().role_assignments, old.counts().role_assignments);
    assert_eq!(new.org_role_users("acme", "superuser").map(|b| b.len()), Some(1));
    assert!(old.org_role_users("acme", "superuser").is_none());
}

fn docs_for(ix: &Index, user: &str) -> Vec<String> {
    let b = ix.list_resources(Subject::User(user), "document", "read", None);
    let mut v: Vec<String> = b.iter().map(|id| ix.res_name(id)).collect();
    v.sort();
    v
}

#[test]
fn list_resources_follows_trees_and_sees_a_batch() {
    let old = ix();
    // bob: viewer on folder:shared reaches the photo two levels down; not the globex folder.
    assert_eq!(docs_for(&old, "bob"), ["document:photo"]);
    // alice: editor across acme; the stray document's parent is in another org.
    assert_eq!(docs_for(&old, "alice"), ["document:photo", "document:stray"]);
    let line = br#"{"from_version": 7, "to_version": 8, "ops": [
        {"op": "upsert", "kind": "resource", "value": {"type": "document", "key": "memo", "org": "acme", "parents": ["folder:inner"]}}]}"#;
    let new = old.apply(&DeltaBatch::from_json(line).unwrap()).unwrap();
    // The per-version query data of the old index must not leak into the new one.
    assert_eq!(docs_for(&new, "bob"), ["document:memo", "document:photo"]);
    assert_eq!(docs_for(&old, "bob"), ["document:photo"]);
}

/// Everything the index holds about assignments, by name: users' org-wide and instance roles,
/// the users-per-(org, role) bitmaps and each resource's holders.
fn assignment_view(ix: &Index) -> Vec<String> {
    let n = &ix.names;
    let mut out = Vec::new();
    for (uid, rec) in ix.users.iter().enumerate() {
        let u = n.users.name(uid as u32);
        let mut roles: Vec<String> = rec
            .org_roles
            .iter()
            .map(|&(o, r)| format!("{u} {} {}", n.orgs.name(o), n.roles.name(r)))
            .chain(
                rec.inst_roles
                    .iter()
                    .map(|&(res, o, r)| format!("{u} {} {} on {}", n.orgs.name(o), n.roles.name(r), ix.res_name(res))),
            )
            .collect();
        roles.sort();
        out.push(format!("user {u}: {roles:?}"));
    }
    for (&(o, r), users) in ix.org_role_users.iter() {
        let mut who: Vec<&str> = users.iter().map(|u| n.users.name(u)).collect();
        who.sort();
        out.push(format!("bitmap {} {}: {who:?}", n.orgs.name(o), n.roles.name(r)));
    }
    for id in 0..ix.res_count() {
        let mut holders: Vec<String> = ix
            .res_holders(id)
            .iter()
            .map(|&(u, o, r)| format!("{} {} {}", n.users.name(u), n.orgs.name(o), n.roles.name(r)))
            .collect();
        holders.sort();
        out.push(format!("holders {}: {holders:?}", ix.res_name(id)));
    }
    out.sort();
    out
}

#[test]
fn bulk_build_equals_one_assignment_at_a_time() {
    use crate::model::generate::{Params, generate};
    use crate::model::{Item, Op, RoleAssignment};
    let mut doc = generate(&Params {
        users: 60,
        assignments: 900,
        resources: 200,
        orgs: 12,
        depth: 4,
        grants: 10,
        seed: 3,
        shape: Default::default(),
    });
    // What only an unvalidated document has: repeats, and references to nothing.
    let repeats: Vec<RoleAssignment> = doc.role_assignments.iter().step_by(7).cloned().collect();
    doc.role_assignments.extend(repeats);
    doc.role_assignments.push(RoleAssignment {
        user: "ghost".into(),
        role: "viewer".into(),
        org: "nowhere".into(),
        resource: Some("folder:missing".into()),
    });
    let bulk = Index::build(&doc);

    let mut empty = doc.clone();
    empty.role_assignments.clear();
    let ops = doc
        .role_assignments
        .iter()
        .map(|a| Op::Upsert(Item::RoleAssignment(a.clone())))
        .collect();
    let batch = DeltaBatch {
        from_version: doc.version,
        to_version: doc.version + 1,
        ops,
    };
    let one_by_one = Index::build(&empty).apply(&batch).unwrap();

    assert_eq!(bulk.counts(), one_by_one.counts());
    assert_eq!(assignment_view(&bulk), assignment_view(&one_by_one));
    assert!(assignment_view(&bulk).len() > 300);
    // Ids are handed out in the same order as upserting each assignment in turn would.
    for (uid, name) in (0..bulk.names.users.len() as u32).map(|i| (i, bulk.names.users.name(i))) {
        assert_eq!(one_by_one.names.users.get(name), Some(uid), "{name}");
    }
}

#[test]
fn users_keep_their_items_whether_or_not_they_say_more_than_the_key() {
    let doc = Snapshot::load(
        b"format: 1\nversion: 1\nusers: [{key: bare}, {key: full, email: f@x, attributes: {a: 1}}]\n\
          role_assignments: [{user: implicit, role: r, org: o}]\n",
        Encoding::Yaml,
    )
    .unwrap();
    let ix = Index::build(&doc);
    assert_eq!(ix.counts().users, 2);
    assert!(ix.user_meta(ix.user("bare").unwrap().id).is_none());
    let back = ix.to_snapshot();
    assert_eq!(back.users, doc.users);
    let mut del = DeltaBatch {
        from_version: 1,
        to_version: 2,
        ops: vec![crate::model::Op::Delete(crate::model::Identity::User {
            key: "bare".into(),
        })],
    };
    let after = ix.apply(&del).unwrap();
    assert_eq!(after.counts().users, 1);
    assert_eq!(after.to_snapshot().users, doc.users[1..]);
    del.from_version = 2;
    del.to_version = 3;
    assert_eq!(
        after.apply(&del).unwrap().counts().users,
        1,
        "deleting twice counts once"
    );
}

/// Applies one batch at version `v` → `v + 1` made of the given op objects.
fn step(ix: &Index, v: u64, ops: &str) -> Index {
    let line = format!(r#"{{"from_version": {v}, "to_version": {}, "ops": [{ops}]}}"#, v + 1);
    ix.apply(&DeltaBatch::from_json(line.as_bytes()).unwrap()).unwrap()
}

#[test]
fn grant_kinds_follow_grants_added_changed_and_deleted() {
    let carol_play = user("carol", "play", "camera", Some("cam1"), None);
    let carol_export = user("carol", "export", "camera", Some("cam1"), None);
    let acme = |ix: &Index| ix.org_grants(ix.names.orgs.get("acme").unwrap()).to_vec();
    let old = ix();
    assert_eq!(reason(&old, carol_play), Reason::RoleGrant);
    assert_eq!(acme(&old).len(), 1);

    // The grant's actions change: `export` now reaches it, `play` no longer does.
    let grant = r#"{"org": "acme", "role": "guard", "resource": "site:hq", "actions": ["camera:export"]}"#;
    let changed = step(
        &old,
        7,
        &format!(r#"{{"op": "upsert", "kind": "role_grant", "value": {grant}}}"#),
    );
    assert_eq!(changed.decide(&carol_export).reason, Reason::RoleGrant);
    assert_eq!(changed.decide(&carol_play).reason, Reason::NoMatchingGrant);
    let kinds = acme(&changed);
    assert_eq!(kinds.len(), 1, "{kinds:?}");
    assert_eq!(kinds.first().map(|k| k.count), Some(1));

    // A second grant of the same kind on the camera itself counts twice; deleting one of
    // them keeps the kind, deleting both removes it and step 6 finds nothing.
    let on_cam = r#"{"org": "acme", "role": "guard", "resource": "camera:cam1", "actions": ["camera:export"]}"#;
    let two = step(
        &changed,
        8,
        &format!(r#"{{"op": "upsert", "kind": "role_grant", "value": {on_cam}}}"#),
    );
    assert_eq!(acme(&two).first().map(|k| k.count), Some(2));
    let one = step(
        &two,
        9,
        &format!(r#"{{"op": "delete", "kind": "role_grant", "value": {grant}}}"#),
    );
    assert_eq!(acme(&one).first().map(|k| k.count), Some(1));
    assert_eq!(one.decide(&carol_export).reason, Reason::RoleGrant);
    let none = step(
        &one,
        10,
        &format!(r#"{{"op": "delete", "kind": "role_grant", "value": {on_cam}}}"#),
    );
    assert!(acme(&none).is_empty());
    assert_eq!(none.decide(&carol_export).reason, Reason::NoMatchingGrant);
    // The old versions are untouched.
    assert_eq!(reason(&old, carol_play), Reason::RoleGrant);
    assert_eq!(acme(&old).first().map(|k| k.pattern.1), old.names.actions.get("play"));
}

#[test]
fn tree_walk_follows_moved_and_many_parented_resources() {
    let bob_photo = user("bob", "read", "document", Some("photo"), None);
    let old = ix();
    assert_eq!(reason(&old, bob_photo), Reason::ResourceRole);
    // The photo moves out from under bob's folder into a new acme folder of its own.
    let moved = step(
        &old,
        7,
        r#"{"op": "upsert", "kind": "resource", "value": {"type": "folder", "key": "side", "org": "acme"}},
           {"op": "upsert", "kind": "resource", "value": {"type": "document", "key": "photo", "org": "acme", "parents": ["folder:side"]}}"#,
    );
    assert_eq!(moved.decide(&bob_photo).reason, Reason::NoMatchingGrant);
    // Two parents: the walk reaches bob's folder through the second one.
    let both = step(
        &moved,
        8,
        r#"{"op": "upsert", "kind": "resource", "value": {"type": "document", "key": "photo", "org": "acme", "parents": ["folder:side", "folder:inner"]}}"#,
    );
    assert_eq!(both.decide(&bob_photo).reason, Reason::ResourceRole);
    // Deleted, the photo is no instance: a type-level check in `default`, where bob has nothing.
    let gone = step(
        &both,
        9,
        r#"{"op": "delete", "kind": "resource", "value": {"type": "document", "key": "photo"}}"#,
    );
    assert_eq!(gone.decide(&bob_photo).reason, Reason::NoMatchingGrant);
    assert_eq!(reason(&old, bob_photo), Reason::ResourceRole);
}

#[test]
fn instance_roles_are_found_in_orgs_that_share_a_mask_bit() {
    // 40 orgs, so some share a bit of `UserRec::inst_orgs` (org id modulo 32).
    let mut doc = String::from("format: 1\nversion: 1\norgs:\n");
    for i in 0..40 {
        doc.push_str(&format!("  - {{key: o{i}}}\n"));
    }
    doc.push_str("resource_types:\n  - {key: folder, actions: [read]}\n");
    doc.push_str("roles:\n  - {key: viewer, permissions: [\"folder:read\"]}\nresources:\n");
    for i in 0..40 {
        doc.push_str(&format!("  - {{type: folder, key: f{i}, org: o{i}}}\n"));
    }
    doc.push_str("role_assignments:\n  - {user: u, role: viewer, org: o3, resource: \"folder:f3\"}\n");
    doc.push_str("  - {user: u, role: viewer, org: o35, resource: \"folder:f35\"}\n");
    let ix = Index::build(&Snapshot::load(doc.as_bytes(), Encoding::Yaml).unwrap());
    let read = |ix: &Index, i: usize| {
        let key = format!("f{i}");
        ix.decide(&user("u", "read", "folder", Some(&key), None)).reason
    };
    let allowed: Vec<usize> = (0..40).filter(|&i| read(&ix, i) == Reason::ResourceRole).collect();
    assert_eq!(allowed, [3, 35]);
    // One of the two removed: the other still holds, whatever bit they shared.
    let line = br#"{"from_version": 1, "to_version": 2, "ops": [
        {"op": "delete", "kind": "role_assignment", "value": {"user": "u", "role": "viewer", "org": "o3", "resource": "folder:f3"}}]}"#;
    let next = ix.apply(&DeltaBatch::from_json(line).unwrap()).unwrap();
    let allowed: Vec<usize> = (0..40).filter(|&i| read(&next, i) == Reason::ResourceRole).collect();
    assert_eq!(allowed, [35]);
}

/// A batch copies only the pages it touches: one assignment, one resource moved, one grant
/// leave every other page of the users, the hot resource table and the resource extras shared
/// with the version before.
#[test]
fn apply_shares_the_pages_a_batch_does_not_touch() {
    use crate::model::generate::{Params, generate};
    let doc = generate(&Params {
        users: 3_000,
        assignments: 30_000,
        resources: 3_000,
        orgs: 10,
        depth: 4,
        grants: 30,
        seed: 5,
        shape: Default::default(),
    });
    let old = Index::build(&doc);
    let a = &doc.role_assignments[17];
    let r = doc.resources.iter().find(|r| r.parents.is_empty()).unwrap();
    let line = format!(
        r#"{{"from_version": 1, "to_version": 2, "ops": [
        {{"op": "upsert", "kind": "role_assignment", "value": {{"user": "{}", "role": "auditor", "org": "{}"}}}},
        {{"op": "upsert", "kind": "resource", "value": {{"type": "{}", "key": "{}", "org": "{}", "attributes": {{"x": 1}}}}}}]}}"#,
        a.user, a.org, r.resource_type, r.key, r.org
    );
    let new = old.apply(&DeltaBatch::from_json(line.as_bytes()).unwrap()).unwrap();
    let (shared, pages) = new.users.pages_shared_with(&old.users);
    assert!(
        pages >= 12 && shared == pages - 1,
        "users: {shared} of {pages} pages shared"
    );
    let (shared, pages) = new.res_extra.pages_shared_with(&old.res_extra);
    assert!(
        pages >= 10 && shared >= pages - 1,
        "extras: {shared} of {pages} pages shared"
    );
    let (shared, pages) = new.res_hot.pages_shared_with(&old.res_hot);
    assert!(
        pages >= 10 && shared >= pages - 2,
        "hot: {shared} of {pages} pages shared"
    );
    let (o, role) = (
        new.names.orgs.get(&a.org).unwrap(),
        new.names.roles.get("auditor").unwrap(),
    );
    assert!(new.user(&a.user).unwrap().org_roles.contains(&(o, role)));
    let id = new.lookup_res(&r.resource_type, &r.key).unwrap();
    assert!(new.res(id).unwrap().item.unwrap().attributes.is_some());
    assert!(old.res(id).unwrap().item.unwrap().attributes.is_none());
}
