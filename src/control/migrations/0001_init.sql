-- permd control plane, schema 1: organisations, projects, API keys, the change feed, and one
-- table per model kind (docs/control-plane.md). Applied in one transaction by
-- `permd control migrate` (and at start unless --no-migrate).

-- The perms.io organisation that holds projects (seed 000). Not a tenant of the model: the
-- model's orgs (tenants) are rows of `orgs` below, inside a project.
CREATE TABLE organisations (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- A project/environment: one snapshot lineage. `version` is the version of its newest batch
-- (0: nothing written yet); writers lock the row, so versions are contiguous per project.
CREATE TABLE projects (
    id               bigserial PRIMARY KEY,
    organisation_id  bigint NOT NULL REFERENCES organisations (id) ON DELETE CASCADE,
    name             text NOT NULL,
    env              text NOT NULL,
    version          bigint NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organisation_id, name, env)
);

-- API keys: only the SHA-256 of the key is kept; `prefix` (the first characters) names it in
-- listings.
CREATE TABLE api_keys (
    id          bigserial PRIMARY KEY,
    project_id  bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    key_hash    bytea NOT NULL UNIQUE,
    prefix      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- The change feed: batch `version` of a project as the JSON line sidecars receive.
CREATE TABLE changes (
    project_id  bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    version     bigint NOT NULL,
    batch       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, version)
);
CREATE INDEX changes_created_at ON changes (created_at);

-- Items of the model, one table per kind. `ident` is the item's identity as canonical JSON
-- (model.md §1), `body` the item as the snapshot holds it (text, so numbers keep every bit),
-- `seq` its place in the document: an upsert that replaces keeps it, an insert takes a new one
-- (what applying a batch to a document does).
CREATE SEQUENCE item_seq;

CREATE TABLE orgs (
    project_id  bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    ident       text NOT NULL,
    seq         bigint NOT NULL DEFAULT nextval('item_seq'),
    body        text NOT NULL,
    PRIMARY KEY (project_id, ident)
);
CREATE TABLE resource_types (LIKE orgs INCLUDING ALL);
ALTER TABLE resource_types ADD FOREIGN KEY (project_id) REFERENCES projects (id) ON DELETE CASCADE;
CREATE TABLE roles (LIKE orgs INCLUDING ALL);
ALTER TABLE roles ADD FOREIGN KEY (project_id) REFERENCES projects (id) ON DELETE CASCADE;
CREATE TABLE users (LIKE orgs INCLUDING ALL);
ALTER TABLE users ADD FOREIGN KEY (project_id) REFERENCES projects (id) ON DELETE CASCADE;
CREATE TABLE resources (LIKE orgs INCLUDING ALL);
ALTER TABLE resources ADD FOREIGN KEY (project_id) REFERENCES projects (id) ON DELETE CASCADE;
CREATE TABLE role_assignments (LIKE orgs INCLUDING ALL);
ALTER TABLE role_assignments ADD FOREIGN KEY (project_id) REFERENCES projects (id) ON DELETE CASCADE;
CREATE TABLE role_grants (LIKE orgs INCLUDING ALL);
ALTER TABLE role_grants ADD FOREIGN KEY (project_id) REFERENCES projects (id) ON DELETE CASCADE;
CREATE TABLE menus (LIKE orgs INCLUDING ALL);
ALTER TABLE menus ADD FOREIGN KEY (project_id) REFERENCES projects (id) ON DELETE CASCADE;

CREATE INDEX orgs_seq ON orgs (project_id, seq);
CREATE INDEX resource_types_seq ON resource_types (project_id, seq);
CREATE INDEX roles_seq ON roles (project_id, seq);
CREATE INDEX users_seq ON users (project_id, seq);
CREATE INDEX resources_seq ON resources (project_id, seq);
CREATE INDEX role_assignments_seq ON role_assignments (project_id, seq);
CREATE INDEX role_grants_seq ON role_grants (project_id, seq);
CREATE INDEX menus_seq ON menus (project_id, seq);
