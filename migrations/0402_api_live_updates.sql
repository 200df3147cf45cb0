-- 0402 live updates for the API's /v1/stream (Server-Sent Events).
-- Two NOTIFY triggers, added by the API, that change no data:
--  command_events: one JSON notification per command inserted or per state change
--                  (commands are few; row-level is fine);
--  balance_events: one notification per INSERT statement on ledger_entries carrying the
--                  id span, so prepaid's batched debits cost one notify per batch; the API
--                  loads the latest balance of each account in the span.

create function api_notify_command() returns trigger language plpgsql as $$
begin
    perform pg_notify('command_events', json_build_object(
        'id', new.id, 'meter_id', new.meter_id, 'account_id', new.account_id,
        'action', new.action, 'state', new.state, 'reason', new.reason,
        'updated_at', new.updated_at)::text);
    return null;
end $$;

create trigger commands_notify_insert after insert on commands
    for each row execute function api_notify_command();
create trigger commands_notify_state after update of state on commands
    for each row when (old.state is distinct from new.state) execute function api_notify_command();

create function api_notify_balance() returns trigger language plpgsql as $$
declare
    lo bigint;
    hi bigint;
begin
    select min(id), max(id) into lo, hi from new_entries;
    if lo is not null then
        perform pg_notify('balance_events', json_build_object('first_id', lo, 'last_id', hi)::text);
    end if;
    return null;
end $$;

create trigger ledger_entries_notify after insert on ledger_entries
    referencing new table as new_entries
    for each statement execute function api_notify_balance();
