-- permd control plane, schema 3: the organisation faces (src/control/orgs/).

-- perms.io invitations (seed 000 `POST organisation/{id}/invite {email}`): one row per
-- organisation and email (compared without case); inviting again refreshes `invited_at`.
CREATE TABLE organisation_invites (
    organisation_id  bigint NOT NULL REFERENCES organisations (id) ON DELETE CASCADE,
    email            text NOT NULL,
    invited_by_key   bigint,
    invited_at       timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX organisation_invites_email ON organisation_invites (organisation_id, lower(email));

-- The audit log of the organisation faces' deletes (seed 004: organisations, their users;
-- seed 001: OU permissions), refused attempts included. Who: the API key and the acting user
-- (`X-Permd-Actor`, absent when the key acted alone); what: `action` on `target` (JSON), with
-- `outcome` and the version the delete made; when: `at`. No foreign keys: a row outlives what
-- it names.
CREATE TABLE org_audit (
    id          bigserial PRIMARY KEY,
    project_id  bigint NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    key_id      bigint NOT NULL,
    actor       text,
    action      text NOT NULL,
    target      text NOT NULL,
    outcome     text NOT NULL,
    version     bigint
);
CREATE INDEX org_audit_project_at ON org_audit (project_id, at);
