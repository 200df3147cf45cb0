-- 0400 api keys: who may call the HTTP API, with which role.
-- The token is shown once at creation; only its SHA-256 (hex) is stored.
-- account_ids lists the accounts a customer key may see (empty for other roles).
create table api_keys (
    id           bigserial primary key,
    name         text not null,
    role         text not null
        check (role in ('admin', 'operator', 'approver', 'integrator', 'customer')),
    account_ids  text[] not null default '{}',
    token_sha256 text not null unique check (token_sha256 ~ '^[0-9a-f]{64}$'),
    created_at   timestamptz not null default now(),
    revoked_at   timestamptz,
    check (role = 'customer' or cardinality(account_ids) = 0)
);
create index api_keys_name on api_keys (name);
