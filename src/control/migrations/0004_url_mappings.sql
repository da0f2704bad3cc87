-- permd control plane, schema 4: URL mapping rules (model.md §6), the `url_mapping` kind,
-- stored as every other kind: identity (`method`, `url`) as canonical JSON, the body as text,
-- `seq` for document order.
CREATE TABLE url_mappings (LIKE orgs INCLUDING ALL);
ALTER TABLE url_mappings ADD FOREIGN KEY (project_id) REFERENCES projects (id) ON DELETE CASCADE;
CREATE INDEX url_mappings_seq ON url_mappings (project_id, seq);
