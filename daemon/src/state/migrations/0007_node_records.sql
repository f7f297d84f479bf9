-- kiroku state store, schema 7: what each box keeps beside its tasks —
-- upload targets (where a spooled file goes, sealed: they carry S3 keys)
-- and the built-in VOD store's file records — under the box that keeps
-- them. A box that restarts finds its own; a survivor can read a dead
-- box's (its shared spool, docs/fleet.md); any box finds a VOD file by
-- its FileId, on whichever box holds it.
CREATE TABLE node_records (
    record_set text        NOT NULL,
    node_id    text        NOT NULL,
    key        text        NOT NULL,
    value      bytea       NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (record_set, node_id, key)
);
CREATE INDEX node_records_by_key ON node_records (record_set, key);
