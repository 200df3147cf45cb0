-- 0200 prepaid: billing state, interval charges, credit state, debts, top-ups,
-- installment plans, policies. prepaid/ owns these tables; control reads them
-- only through prepaid.operations (credit_facts).

-- Credit policy documents (prepaid/credit.py CreditPolicy; {} = all defaults).
create table prepaid_policies (
    name       text primary key,
    definition jsonb not null default '{}'::jsonb,
    updated_at timestamptz not null default now()
);
insert into prepaid_policies (name, definition) values ('default', '{}'::jsonb);

-- Per-meter billing watermark (prepaid/billing.py MeterState). last_ts only moves
-- forward: a reading at or before it was already billed.
create table billing_state (
    meter_id         text primary key references meters(id),
    last_ts          timestamptz,
    last_register_wh bigint,
    pending_start    timestamptz,
    pending_wh       bigint not null default 0,
    residual_micro   bigint not null default 0,
    tier_period      integer,
    tier_used_wh     bigint not null default 0,
    rebaseline_at    timestamptz,
    updated_at       timestamptz not null default now()
);

-- One row per (meter, interval, tier block): the explainable bill. amount_micro is
-- exact (1e-6 minor units); the ledger entry that posted it (rounded once) is
-- ledger_entry_id. A hypertable, so a one-year statement is one indexed range scan.
create table interval_charges (
    meter_id        text not null,
    account_id      text not null,
    interval_start  timestamptz not null,
    block           smallint not null default 0,
    label           text not null,
    energy_wh       bigint not null check (energy_wh >= 0),
    rate_micro      bigint not null check (rate_micro >= 0),
    amount_micro    bigint not null check (amount_micro >= 0),
    tariff_from     timestamptz not null,
    ledger_entry_id bigint not null,
    primary key (meter_id, interval_start, block)
);
select create_hypertable('interval_charges', by_range('interval_start', interval '30 days'));
create index interval_charges_account on interval_charges (account_id, interval_start);

-- Credit state per account (prepaid/credit.py). Missing row = defaults.
create table credit_state (
    account_id      text primary key references accounts(id),
    state           text not null default 'normal'
        check (state in ('normal', 'emergency', 'friendly', 'exhausted')),
    low_fired       integer[] not null default '{}',
    days_warned     boolean not null default false,
    daily_use_minor bigint not null default 0,
    policy          text not null default 'default' references prepaid_policies(name),
    state_since     timestamptz not null default now(),
    updated_at      timestamptz not null default now()
);

-- Arrears carried per account, recovered oldest first from top-ups or daily.
-- kinds: arrears, friendly_credit, previous_occupant, adjustment.
create table debts (
    id                bigserial primary key,
    account_id        text not null references accounts(id),
    kind              text not null,
    original_minor    bigint not null check (original_minor > 0),
    outstanding_minor bigint not null check (outstanding_minor >= 0),
    created_at        timestamptz not null default now(),
    reference         text,
    detail            jsonb not null default '{}'::jsonb
);
create index debts_account on debts (account_id, id) where outstanding_minor > 0;

-- Top-ups: one per (channel, channel's own reference).
create table topups (
    id              bigserial primary key,
    channel         text not null
        check (channel in ('counter', 'bank', 'pos', 'atm', 'app', 'mobile_money')),
    reference       text not null,
    account_id      text not null references accounts(id),
    amount_minor    bigint not null check (amount_minor > 0),
    received_at     timestamptz not null,
    split           jsonb not null,
    ledger_entry_id bigint not null,
    reversed_at     timestamptz,
    reversal_reason text,
    unique (channel, reference)
);
create index topups_account on topups (account_id, received_at);

-- Installment plans for large commercial accounts: a period's charges split into
-- dated installments. state is stored as good_standing/completed/cancelled; "missed"
-- is derived at read time from an installment past due and unpaid (and stored by
-- the daily job so control sees it).
create table installment_plans (
    id           bigserial primary key,
    account_id   text not null references accounts(id),
    period_start timestamptz not null,
    period_end   timestamptz not null,
    total_minor  bigint not null check (total_minor > 0),
    state        text not null default 'good_standing'
        check (state in ('good_standing', 'missed', 'completed', 'cancelled')),
    created_at   timestamptz not null default now(),
    created_by   text,
    unique (account_id, period_start, period_end)
);
create table installments (
    plan_id      bigint not null references installment_plans(id),
    seq          integer not null,
    due_at       timestamptz not null,
    amount_minor bigint not null check (amount_minor > 0),
    paid_minor   bigint not null default 0,
    paid_at      timestamptz,
    primary key (plan_id, seq)
);
