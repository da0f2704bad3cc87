"""The official Permit Python SDK against a running permd (tests/permit_sdk.rs).

Every SDK method that calls the PDP, with the SDK's own argument shapes; prints one JSON object
of what each returned, for the Rust test to assert. Usage: calls.py http://127.0.0.1:PORT
"""
import json
import sys

from permit.sync import Permit

permit = Permit(pdp=sys.argv[1], token="permd-sdk-test", pdp_timeout=10)
out = {}

out["check"] = {
    "alice_write_document_acme": permit.check("alice", "write", {"type": "document", "tenant": "acme"}),
    "alice_write_document_globex": permit.check("alice", "write", {"type": "document", "tenant": "globex"}),
    # The SDK sends its default tenant (`default`) when none is given: photo is in acme.
    "bob_read_photo_default_tenant": permit.check("bob", "read", "document:photo"),
    "bob_read_photo": permit.check("bob", "read", {"type": "document", "key": "photo", "tenant": "acme"}),
    "bob_write_photo": permit.check(
        {"key": "bob", "attributes": {"x": 1}}, "write", {"type": "document", "key": "photo", "tenant": "acme"}
    ),
    "carol_play_cam1": permit.check("carol", "play", {"type": "camera", "key": "cam1", "tenant": "acme"}),
}
out["bulk_check"] = permit.bulk_check(
    [
        {"user": "alice", "action": "read", "resource": {"type": "document", "tenant": "acme"}},
        {"user": "bob", "action": "write", "resource": {"type": "document", "key": "photo", "tenant": "acme"}},
        {"user": "carol", "action": "play", "resource": {"type": "camera", "key": "cam1", "tenant": "acme"}},
        {"user": "carol", "action": "play", "resource": "camera:cam1"},
    ]
)
perms = permit.get_user_permissions("alice", tenants=["acme"])
out["get_user_permissions"] = {k: sorted(v.get("permissions", [])) for k, v in perms.items()}
bob_perms = permit.get_user_permissions("bob")
out["get_user_permissions_bob"] = {k: sorted(v.get("permissions", [])) for k, v in bob_perms.items()}

users = permit.authorized_users("read", {"type": "document", "key": "photo", "tenant": "acme"})
out["authorized_users"] = {
    "resource": users.resource,
    "tenant": users.tenant,
    "users": sorted(users.users.keys()),
}

# Present in some SDK versions only.
if hasattr(permit, "check_all_tenants"):
    res = permit.check_all_tenants("alice", "read", "document")
    out["check_all_tenants"] = sorted(t["tenant"]["key"] if isinstance(t, dict) else t.tenant.key for t in res)
if hasattr(permit, "get_user_tenants"):
    res = permit.get_user_tenants("alice")
    out["get_user_tenants"] = sorted(t["key"] if isinstance(t, dict) else t.key for t in res)
if hasattr(permit, "check_url"):
    out["check_url"] = permit.check_url("bob", "GET", "https://app.example.com/documents/photo", "acme")

print(json.dumps(out))
