-- 0002 account facts shared by prepaid (producer) and control (consumer).

-- Events about an account's credit that control acts upon. prepaid appends them
-- in the transaction that changed the balance and NOTIFYs channel 'account_events'
-- with the id as payload. dedupe_key makes a repeated event one row.
-- kinds: credit_exhausted, credit_restored, low_credit, emergency_credit_started,
--        topup, topup_reversed, protection_added, dispute_opened, dispute_closed
create table account_events (
    id         bigserial primary key,
    account_id text not null references accounts(id),
    kind       text not null,
    at         timestamptz not null default now(),
    detail     jsonb not null default '{}'::jsonb,
    dedupe_key text unique
);
create index account_events_account on account_events (account_id, id);

-- Customer protections (medical certificate, life support, vulnerable, elderly
-- living alone, child under 2). A protection is active while valid_until is null
-- or in the future and it is not revoked; a lapse needs a person's review.
create table protections (
    id          bigserial primary key,
    account_id  text not null references accounts(id),
    kind        text not null,
    valid_from  timestamptz not null default now(),
    valid_until timestamptz,
    revoked_at  timestamptz,
    reviewed_by text,
    created_at  timestamptz not null default now(),
    detail      jsonb not null default '{}'::jsonb
);
create index protections_account on protections (account_id);

-- Disputes: an open dispute blocks disconnection; the disputed amount is not recovered.
create table disputes (
    id              bigserial primary key,
    account_id      text not null references accounts(id),
    amount_minor    bigint not null check (amount_minor >= 0),
    opened_at       timestamptz not null default now(),
    closed_at       timestamptz,
    resolution      text,
    detail          jsonb not null default '{}'::jsonb
);
create index disputes_open on disputes (account_id) where closed_at is null;
