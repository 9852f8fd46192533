-- Users and API tokens of the standalone service (SPEC §7).
CREATE TABLE users (
    id            bigserial PRIMARY KEY,
    email         text NOT NULL,
    password_hash text NOT NULL,
    is_admin      boolean NOT NULL DEFAULT false,
    disabled_at   timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

-- Tokens are stored as a SHA-256 of the secret part; the prefix identifies a
-- token for revocation and is not secret on its own.
CREATE TABLE api_tokens (
    id           bigserial PRIMARY KEY,
    user_id      bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    prefix       text NOT NULL UNIQUE,
    token_hash   bytea NOT NULL,
    scopes       text[] NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_tokens_user ON api_tokens (user_id);

-- One row per execution. last_event_id is the per-execution counter: appends
-- lock this row and bump it in their own transaction, so ids are gap-free and
-- in commit order per execution (SPEC §3).
CREATE TABLE executions (
    exec_id           text PRIMARY KEY,
    kind              text NOT NULL CHECK (kind IN ('workflow', 'agent', 'task')),
    name              text NOT NULL,
    status            text NOT NULL DEFAULT 'PENDING' CHECK (status IN
                        ('PENDING', 'RUNNING', 'PAUSED', 'SUCCESS', 'FAILED', 'CANCELED', 'TIMED_OUT')),
    input             jsonb,
    output_schema     jsonb,
    owner_id          text NOT NULL,
    last_event_id     bigint NOT NULL DEFAULT 0,
    last_sequence     bigint NOT NULL DEFAULT 0,
    terminal_event_id bigint,
    created_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at        timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX executions_owner_list ON executions (owner_id, kind, created_at DESC, exec_id DESC);
CREATE INDEX executions_kind_list ON executions (kind, created_at DESC, exec_id DESC);

-- Durable events. envelope is the JSON object streamed as a frame's data,
-- rendered once at append so replay sends stored text without re-encoding.
CREATE TABLE events (
    exec_id    text NOT NULL REFERENCES executions (exec_id) ON DELETE CASCADE,
    id         bigint NOT NULL CHECK (id > 0),
    type       text NOT NULL,
    created_at timestamptz NOT NULL,
    envelope   text NOT NULL,
    PRIMARY KEY (exec_id, id)
);
