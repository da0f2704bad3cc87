-- permd control plane, schema 2: stable numeric role ids (perm/v1 `Role.id`), assigned by the
-- write path to every role upsert that comes without one (a role keeps the id it has).
CREATE SEQUENCE role_ids;
