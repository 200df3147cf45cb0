-- 0201: the balance after the posting that billed an interval, on the charge row itself,
-- so a statement reads interval_charges alone (no join to the ledger). Rows written
-- before this migration keep it null and the statement falls back to the ledger entry.
alter table interval_charges add column balance_after_minor bigint;
