-- 0401 idempotency keys of POSTs that create money or a command.
-- (key_id, idempotency_key) is claimed before the operation runs (response null =
-- in flight) and the response is stored after. The same key with the same request
-- (method, path, body SHA-256) replays the stored response; a different request -> 422.
create table api_idempotency (
    key_id          bigint not null references api_keys(id),
    idempotency_key text not null,
    method          text not null,
    path            text not null,
    request_sha256  text not null,
    status_code     integer,
    response        jsonb,
    created_at      timestamptz not null default now(),
    completed_at    timestamptz,
    primary key (key_id, idempotency_key)
);
create index api_idempotency_created on api_idempotency (created_at);
