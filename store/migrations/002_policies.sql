-- Compression and retention exist only in the community ('timescale') license;
-- the Apache build refuses them, so they are added only where they work.
DO $$
BEGIN
    IF current_setting('timescaledb.license', true) = 'timescale' THEN
        ALTER TABLE positions SET (timescaledb.compress,
            timescaledb.compress_segmentby = 'tenant, vehicle_id',
            timescaledb.compress_orderby = 'fix_time DESC, seq');
        PERFORM add_compression_policy('positions', INTERVAL '7 days');
        ALTER TABLE temperatures SET (timescaledb.compress,
            timescaledb.compress_segmentby = 'tenant, vehicle_id',
            timescaledb.compress_orderby = 'fix_time DESC, seq');
        PERFORM add_compression_policy('temperatures', INTERVAL '14 days');
        PERFORM add_retention_policy('dead_letters', INTERVAL '90 days');
        PERFORM add_retention_policy('device_status', INTERVAL '90 days');
        RAISE NOTICE 'timescaledb license is timescale: compression and retention policies added';
    ELSE
        RAISE NOTICE 'timescaledb license is %: compression and retention policies skipped',
            coalesce(current_setting('timescaledb.license', true), 'unknown');
    END IF;
END
$$;
