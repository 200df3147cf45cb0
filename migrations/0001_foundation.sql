-- 0001 foundation: the tables every package shares.
--
-- Numbering: 0001-0099 foundation, 0100-0199 ingest, 0200-0299 prepaid,
-- 0300-0399 control, 0400-0499 api. Each file runs once, in one transaction,
-- and is recorded in schema_migrations (see headend/db.py).
--
-- Time is timestamptz (UTC in storage). Money is bigint minor units (fen for CNY).
-- Meter quantities are named by OBIS code; energy in Wh, power in W.

create extension if not exists timescaledb;

-- A service point: where supply is delivered. Local rules (windows, holidays,
-- tariff bands) use its time zone and country.
create table service_points (
    id            text primary key,
    feeder        text not null,
    area          text not null default 'default',
    timezone      text not null default 'Asia/Shanghai',
    country       text not null default 'CN',
    subdivision   text,
    account_class text not null default 'residential'
        check (account_class in ('residential', 'non_residential', 'large_commercial', 'important')),
    created_at    timestamptz not null default now()
);

-- A tariff and its versions. A version takes effect at effective_from and never
-- re-rates consumption before that instant. definition is the tariff document
-- (prepaid/tariffs.py owns its schema).
create table tariffs (
    id         text primary key,
    name       text not null,
    currency   char(3) not null default 'CNY',
    created_at timestamptz not null default now()
);
create table tariff_versions (
    tariff_id      text not null references tariffs(id),
    effective_from timestamptz not null,
    definition     jsonb not null,
    created_at     timestamptz not null default now(),
    created_by     text,
    primary key (tariff_id, effective_from)
);

-- An account: a customer's prepaid balance at a service point. One open account
-- per service point; a new occupant gets a new account (the previous occupant's
-- debt stays on the old one).
create table accounts (
    id               text primary key,
    service_point_id text not null references service_points(id),
    customer_name    text,
    currency         char(3) not null default 'CNY',
    tariff_id        text references tariffs(id),
    balance_minor    bigint not null default 0,
    status           text not null default 'open' check (status in ('open', 'closed')),
    opened_at        timestamptz not null default now(),
    closed_at        timestamptz
);
create unique index accounts_one_open_per_sp on accounts (service_point_id) where status = 'open';

-- A meter, installed at a service point, reached over MQTT or Modbus TCP.
create table meters (
    id                 text primary key,
    service_point_id   text references service_points(id),
    protocol           text not null default 'mqtt' check (protocol in ('mqtt', 'modbus')),
    model              text not null default 'native',
    mqtt_topic         text,
    modbus_host        text,
    modbus_port        integer,
    modbus_unit        integer,
    modbus_map         text,
    poll_interval_s    integer not null default 900,
    rated_current_a    numeric not null default 60,
    nominal_voltage_v  numeric not null default 230,
    phases             integer not null default 1,
    register_max_wh    bigint not null default 99999900,
    supports_load_limit boolean not null default false,
    relay_state        text not null default 'unknown',
    relay_state_at     timestamptz,
    comms_state        text not null default 'unknown',
    last_seen_at       timestamptz,
    billing_hold       text,
    created_at         timestamptz not null default now()
);

-- Interval readings. One row per (meter, OBIS code, timestamp): duplicates are
-- dropped set-wise on insert (ON CONFLICT DO NOTHING).
create table readings (
    meter_id    text not null,
    obis        text not null,
    ts          timestamptz not null,
    value       double precision not null,
    received_at timestamptz not null default now(),
    source      text not null default 'mqtt',
    primary key (meter_id, obis, ts)
);
select create_hypertable('readings', by_range('ts', interval '7 days'));

-- Meter events: power fail/restore, cover open, relay change, comms lost/restored,
-- register reset, spike, gap...
create table meter_events (
    meter_id    text not null,
    ts          timestamptz not null,
    kind        text not null,
    detail      jsonb not null default '{}'::jsonb,
    received_at timestamptz not null default now(),
    source      text not null default 'mqtt',
    primary key (meter_id, kind, ts)
);
select create_hypertable('meter_events', by_range('ts', interval '30 days'));

-- Billing hand-off: the rows of 1-0:1.8.0 that were really new, written in the
-- same transaction as the readings. prepaid claims them (FOR UPDATE SKIP LOCKED)
-- and deletes them in the transaction that posts the debits: exactly once.
create table billing_queue (
    id          bigserial primary key,
    meter_id    text not null,
    ts          timestamptz not null,
    energy_wh   double precision not null,
    enqueued_at timestamptz not null default now()
);
create index billing_queue_meter on billing_queue (meter_id, ts);

-- Ledger: append-only. amount_minor is signed (+ credit to the customer, - charge).
-- accounts.balance_minor is updated in the same transaction and always equals
-- the sum of the account's entries.
create table ledger_entries (
    id                  bigserial primary key,
    account_id          text not null references accounts(id),
    posted_at           timestamptz not null default now(),
    kind                text not null,
    amount_minor        bigint not null,
    balance_after_minor bigint not null,
    reference           text,
    meter_id            text,
    period_start        timestamptz,
    period_end          timestamptz,
    detail              jsonb not null default '{}'::jsonb
);
create index ledger_entries_account on ledger_entries (account_id, id);
create unique index ledger_entries_reference on ledger_entries (account_id, kind, reference)
    where reference is not null;

-- Quarantine: anything that could not be accepted, with its raw bytes and reason.
create table quarantine (
    id          bigserial primary key,
    received_at timestamptz not null default now(),
    source      text not null,
    topic       text,
    meter_id    text,
    payload     bytea not null,
    reason      text not null,
    replayed_at timestamptz,
    replay_result text
);
create index quarantine_received on quarantine (received_at);

-- Customer notices outbox (prepaid/notices owns the senders).
create table notices (
    id           bigserial primary key,
    account_id   text not null references accounts(id),
    kind         text not null,
    dedupe_key   text unique,
    body         jsonb not null default '{}'::jsonb,
    created_at   timestamptz not null default now(),
    channel      text,
    status       text not null default 'pending',
    attempts     integer not null default 0,
    next_attempt_at timestamptz not null default now(),
    sent_at      timestamptz,
    delivered_at timestamptz,
    last_error   text
);
create index notices_pending on notices (next_attempt_at) where status = 'pending';

-- Remote commands (control owns the lifecycle).
create table commands (
    id              bigserial primary key,
    idempotency_key text not null unique,
    meter_id        text not null references meters(id),
    account_id      text references accounts(id),
    action          text not null,
    state           text not null,
    reason          text,
    requested_by    text,
    approved_by     text,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now(),
    not_before      timestamptz,
    expires_at      timestamptz,
    attempts        integer not null default 0,
    detail          jsonb not null default '{}'::jsonb
);
create index commands_state on commands (state, not_before);

-- Audit: append-only, hash-chained (control/audit.py computes the hashes).
create table audit_log (
    seq         bigserial primary key,
    at          timestamptz not null default now(),
    actor       text not null,
    action      text not null,
    subject     text,
    detail      jsonb not null default '{}'::jsonb,
    prev_hash   text not null,
    hash        text not null
);
