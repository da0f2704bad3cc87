-- permd control plane, schema 5: attribute rules (model.md §5, delta kind `rule`), stored like
-- every other kind: one row per project and identity, the item's JSON in `body`.
CREATE TABLE rules (LIKE orgs INCLUDING ALL);
ALTER TABLE rules ADD FOREIGN KEY (project_id) REFERENCES projects (id) ON DELETE CASCADE;
CREATE INDEX rules_seq ON rules (project_id, seq);
