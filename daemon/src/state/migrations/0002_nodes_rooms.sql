-- kiroku state store, schema 2: the fleet's boxes and who owns each room
-- (daemon/src/cluster/). A box is alive while its heartbeat is younger
-- than the lease; a room belongs to one box, and its epoch grows at every
-- takeover.
CREATE TABLE nodes (
    node_id       text PRIMARY KEY,
    advertise_url text NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE rooms (
    sdk_app_id bigint NOT NULL,
    room_id    text NOT NULL,
    owner      text NOT NULL,
    epoch      bigint NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sdk_app_id, room_id)
);
CREATE INDEX rooms_by_owner ON rooms (owner);
