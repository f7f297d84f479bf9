-- kiroku state store, schema 5: placement and drain (daemon/src/cluster/).
-- Each box states how many tasks it takes (limits.max_tasks) so that a
-- room with no owner goes to the box with the most room left; a draining
-- box takes no new room; a task handed over by a draining box waits for
-- its new owner to pick it up.
ALTER TABLE nodes ADD COLUMN capacity integer NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN draining boolean NOT NULL DEFAULT false;
ALTER TABLE tasks ADD COLUMN handed_over boolean NOT NULL DEFAULT false;
