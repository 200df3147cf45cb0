-- 0202: a statement (one account, a range of intervals) is an index-only scan: the
-- account index carries every column the statement reads. It replaces
-- interval_charges_account (same key), so billing still maintains one index for it.
create index interval_charges_statement on interval_charges (account_id, interval_start)
    include (meter_id, block, label, energy_wh, rate_micro, amount_micro, ledger_entry_id, balance_after_minor);
drop index interval_charges_account;

-- Every charge row carries the balance after its posting (rows from before 0201 get it
-- from their ledger entry), so the statement reads no ledger row per interval.
update interval_charges c set balance_after_minor = l.balance_after_minor
    from ledger_entries l where c.balance_after_minor is null and l.id = c.ledger_entry_id;
alter table interval_charges alter column balance_after_minor set not null;
