-- kiroku state store, schema 1: the live tasks, the records set aside as
-- unreadable, and the callback outbox (daemon/src/state/postgres.rs).
CREATE TABLE tasks (
    task_id    text PRIMARY KEY,
    -- The task record: JSON, sealed with [secrets] key_file when there is one.
    value      bytea NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE task_quarantine (
    task_id      text PRIMARY KEY,
    value        bytea NOT NULL,
    set_aside_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE outbox (
    seq             bigserial PRIMARY KEY,
    task_id         text NOT NULL,
    sdk_app_id      bigint NOT NULL,
    event_type      integer NOT NULL,
    url             text NOT NULL,
    body            text NOT NULL,
    sign            text NOT NULL,
    created_ms      bigint NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_ms bigint NOT NULL
);
CREATE INDEX outbox_by_task ON outbox (task_id, seq);
