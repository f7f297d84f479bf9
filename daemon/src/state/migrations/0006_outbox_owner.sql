-- kiroku state store, schema 6: which box delivers each callback. A box
-- loads and delivers its own rows; when a box dies, a live box claims its
-- rows (daemon/src/cluster/) and delivers them, in order per task. Rows
-- written before schema 6 have no owner and are loaded by every box that
-- starts (at least once, as before).
ALTER TABLE outbox ADD COLUMN node_id text;
CREATE INDEX outbox_by_node ON outbox (node_id, seq);
