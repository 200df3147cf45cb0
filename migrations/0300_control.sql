-- 0300 control: what the guarded-disconnect engine needs beyond 0001/0002.
--
-- commands gains the lifecycle columns: a correlation id (what the meter echoes in its ack),
-- the policy version at plan time and at dispatch (both audited), the worker lease
-- (claimed_by / claimed_until: a crashed worker's command is picked up again), the plan it
-- belongs to, a priority (protected customers reconnect first), a hard deadline
-- (reconnects: 24 h) and the relay state read back.

alter table commands
    add column correlation_id   uuid not null default gen_random_uuid(),
    add column plan_id          bigint,
    add column manual           boolean not null default false,
    add column batch_id         text,
    add column batch_size       integer not null default 1,
    add column priority         integer not null default 0,
    add column policy_profile   text,
    add column policy_version_planned    integer,
    add column policy_version_dispatched integer,
    add column claimed_by       text,
    add column claimed_until    timestamptz,
    add column sent_at          timestamptz,
    add column confirmed_at     timestamptz,
    add column deadline_at      timestamptz,
    add column relay_read_back  text,
    add column last_error       text,
    add column supersedes       bigint references commands(id);
create unique index commands_correlation on commands (correlation_id);
create index commands_due on commands (not_before, priority desc)
    where state in ('requested', 'scheduled', 'sent', 'awaiting_approval');
create index commands_meter on commands (meter_id, id);

-- Policy versions: a profile's effective document (floor + company), never edited; the
-- newest version whose effective_from has passed is in force.
create table policy_versions (
    profile        text not null,
    version        integer not null check (version >= 1),
    document       jsonb not null,
    effective_from timestamptz not null default now(),
    created_at     timestamptz not null default now(),
    created_by     text not null,
    primary key (profile, version)
);

-- A planned disconnect of an account: one open plan per account (a repeated event makes none).
create table disconnect_plans (
    id              bigserial primary key,
    account_id      text not null references accounts(id),
    meter_id        text not null references meters(id),
    event_id        bigint,
    state           text not null default 'open' check (state in ('open', 'done', 'cancelled', 'case')),
    execute_at      timestamptz,
    notice_id       bigint references notices(id),
    reminder_id     bigint references notices(id),
    policy_profile  text,
    policy_version  integer,
    created_at      timestamptz not null default now(),
    closed_at       timestamptz,
    close_reason    text
);
create unique index disconnect_plans_one_open on disconnect_plans (account_id) where state = 'open';

-- Operators and their roles (approver role for approvals).
create table control_operators (
    name  text primary key,
    roles text[] not null default '{}'
);

-- Switches: the global kill switch (stops every disconnect at once).
create table control_switches (
    name   text primary key,
    is_on  boolean not null,
    set_by text not null,
    set_at timestamptz not null default now(),
    reason text
);
insert into control_switches (name, is_on, set_by, reason) values ('kill_switch', false, 'migration', 'initial');

-- Weather forecasts per service area: min/max over [horizon_start, horizon_end].
create table weather_forecasts (
    id            bigserial primary key,
    area          text not null,
    issued_at     timestamptz not null,
    horizon_start timestamptz not null,
    horizon_end   timestamptz not null,
    min_c         numeric not null,
    max_c         numeric not null,
    source        text not null default 'manual',
    created_at    timestamptz not null default now()
);
create index weather_forecasts_area on weather_forecasts (area, issued_at desc);

-- Payment channel health: one row per channel, changed_at = when the current state began.
create table payment_channel_health (
    channel    text primary key,
    healthy    boolean not null,
    changed_at timestamptz not null,
    detail     text
);

-- Cases / work orders for a person: protections, important users, meter rejections,
-- UNKNOWN relay states (field work order), armed timeouts, self-disconnection support.
create table cases (
    id          bigserial primary key,
    kind        text not null,
    account_id  text references accounts(id),
    meter_id    text references meters(id),
    command_id  bigint references commands(id),
    status      text not null default 'open' check (status in ('open', 'closed')),
    opened_at   timestamptz not null default now(),
    closed_at   timestamptz,
    closed_by   text,
    detail      jsonb not null default '{}'::jsonb,
    dedupe_key  text unique
);
create index cases_open on cases (kind) where status = 'open';

-- account_events control has handled (exactly once across control processes).
create table control_processed_events (
    event_id     bigint primary key,
    processed_at timestamptz not null default now(),
    outcome      text not null
);

-- Hash-chain appends are serialised by a transaction-level advisory lock (control/audit.py);
-- the table itself refuses updates and deletes.
create function audit_log_append_only() returns trigger language plpgsql as $$
begin
    raise exception 'audit_log is append-only';
end $$;
create trigger audit_log_no_update before update or delete on audit_log
    for each statement execute function audit_log_append_only();
create index audit_log_subject on audit_log (subject);
