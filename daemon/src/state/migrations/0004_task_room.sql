-- kiroku state store, schema 4: the room each task records, so that the box
-- that takes a dead box's room over also takes its tasks (daemon/src/cluster/).
ALTER TABLE tasks ADD COLUMN sdk_app_id bigint;
ALTER TABLE tasks ADD COLUMN room_key text;
CREATE INDEX tasks_by_room ON tasks (sdk_app_id, room_key);
