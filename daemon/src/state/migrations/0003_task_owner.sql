-- kiroku state store, schema 3: which box runs each task. A box loads and
-- resumes only its own tasks (rows written before schema 3 have no owner
-- and go to the first box that loads them).
ALTER TABLE tasks ADD COLUMN node_id text;
CREATE INDEX tasks_by_node ON tasks (node_id);
