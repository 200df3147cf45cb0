-- 0900 compression and retention (Timescale-licensed edition only).
--
-- Applied only where timescaledb.license = 'timescale' (e.g. the docker image);
-- skipped, and not recorded, on the Apache edition, so it runs later if the
-- license changes. Readings are billing evidence: kept 10 years, compressed
-- after 30 days (late readings still insert: TimescaleDB >= 2.11 decompresses
-- as needed for ON CONFLICT). Events: compressed after 90 days, kept 5 years.

alter table readings set (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'meter_id, obis',
    timescaledb.compress_orderby = 'ts'
);
select add_compression_policy('readings', interval '30 days', if_not_exists => true);
select add_retention_policy('readings', interval '10 years', if_not_exists => true);

alter table meter_events set (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'meter_id',
    timescaledb.compress_orderby = 'ts'
);
select add_compression_policy('meter_events', interval '90 days', if_not_exists => true);
select add_retention_policy('meter_events', interval '5 years', if_not_exists => true);
