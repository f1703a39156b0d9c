-- Who may read and write what: one database role per engine process kind, row-level
-- security on every table with a tenant column, views that run as their reader.
--
-- Roles (the embedded services create them as logins with passwords: fleetstream/database.py;
-- missing ones are created here without login when this migration may create roles):
--   fleetstream_gateway   gateway shards and tracker listeners: insert readings, dead letters
--   fleetstream_flow      the dataflow: read readings and plans, upsert its results
--   fleetstream_dispatch  the dispatch listener: store plans, dead letters
--   fleetstream_deliver   the deliverer: read results, keep its cursors
--   fleetstream_api       the HTTP API: one tenant per transaction (the setting fleetstream.tenant)
--   fleetstream_readers   group of the read-only tenant logins (fleetstream db reader TENANT)
--   fleetstream_engine         group: sees every tenant (gateway, flow, dispatch, deliver)
--   fleetstream_tenant_scoped  group: sees one tenant (the API, the readers)
-- The owner of the schema (the migration role) bypasses row-level security as owners do.
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['fleetstream_engine', 'fleetstream_tenant_scoped', 'fleetstream_readers',
                             'fleetstream_gateway', 'fleetstream_flow', 'fleetstream_dispatch',
                             'fleetstream_deliver', 'fleetstream_api']
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
END
$$;

-- Plans are numbered from a sequence: a writer that sees one tenant's plans only (the API)
-- could not number them from max(plan_seq). Writers still take the plan lock first, so
-- plan_seq follows commit order.
CREATE SEQUENCE plan_seq OWNED BY plans.plan_seq;
SELECT setval('plan_seq', coalesce((SELECT max(plan_seq) FROM plans), 0) + 1, false);

-- Which tenant each read-only login reads (only its owner reads it: no grant, no policy).
CREATE TABLE tenant_readers (
    role_name   name        PRIMARY KEY,
    tenant      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE tenant_readers ENABLE ROW LEVEL SECURITY;

-- The tenant a reader's login reads. By login (session_user): neither SET ROLE nor a setting moves it.
CREATE FUNCTION fleetstream_tenant() RETURNS text
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    SELECT tenant FROM public.tenant_readers WHERE role_name = session_user
$$;
REVOKE ALL ON FUNCTION fleetstream_tenant() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION fleetstream_tenant() TO fleetstream_readers;

-- Row-level security on every table with a tenant column. The engine sees all rows; the API the
-- tenant its transaction names (api/tenancy.py sets fleetstream.tenant; unset: none); a reader its
-- login's tenant ((SELECT ...): evaluated once per query, usable by index scans). The API's policy
-- is written "tenant = ANY (ARRAY[...])" on purpose: TimescaleDB 2.19 fails to plan an UPDATE of
-- a hypertable under a policy "tenant = <a function call>" ("variable not found in subplan target
-- list"; measured, current_setting and SQL functions alike), and the API updates alerts.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['positions', 'temperatures', 'door_events', 'device_status', 'vehicles',
                             'vehicle_state', 'plans', 'alerts', 'stop_events', 'cell_minutes',
                             'eta_updates', 'device_seqs', 'trackers', 'api_tokens', 'alert_actions']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY engine_rows ON %I TO fleetstream_engine USING (true) WITH CHECK (true)', t);
        EXECUTE format('CREATE POLICY api_rows ON %I TO fleetstream_api '
                       'USING (tenant = ANY (ARRAY[current_setting(''fleetstream.tenant'', true)])) '
                       'WITH CHECK (tenant = ANY (ARRAY[current_setting(''fleetstream.tenant'', true)]))', t);
        EXECUTE format('CREATE POLICY reader_rows ON %I FOR SELECT TO fleetstream_readers '
                       'USING (tenant = (SELECT fleetstream_tenant()))', t);
    END LOOP;
END
$$;
-- a bearer token is how the API learns a request's tenant: it looks tokens up across tenants
CREATE POLICY api_login ON api_tokens FOR SELECT TO fleetstream_api USING (true);

-- Views run with the privileges and the row-level security of whoever reads them.
ALTER VIEW latest_positions SET (security_invoker = true);
ALTER VIEW open_alerts SET (security_invoker = true);
ALTER VIEW vehicle_current SET (security_invoker = true);
ALTER VIEW dwell_by_zone SET (security_invoker = true);
ALTER VIEW on_time_rate SET (security_invoker = true);
ALTER VIEW h3_minute_stats SET (security_invoker = true);
ALTER VIEW eta_errors SET (security_invoker = true);
ALTER VIEW eta_accuracy SET (security_invoker = true);

-- Privileges: nothing for anyone else.
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM PUBLIC;

-- gateway shards and tracker listeners (ingest/writer.py, ingest/frontend.py, store/trackers.py)
GRANT SELECT, INSERT ON positions, temperatures, door_events, device_status, device_seqs, vehicles,
    dead_letters, dead_letter_digests TO fleetstream_gateway;
GRANT SELECT, INSERT, UPDATE ON gateway_shards, tracker_refusals TO fleetstream_gateway;
GRANT SELECT ON trackers TO fleetstream_gateway;

-- the dataflow (pipelines/connectors.py, pipelines/run.py)
GRANT SELECT ON positions, temperatures, door_events, gateway_shards, plans, dwell_baselines TO fleetstream_flow;
GRANT SELECT, INSERT, UPDATE ON vehicle_state, alerts, stop_events, eta_updates, cell_minutes TO fleetstream_flow;
GRANT USAGE ON SEQUENCE event_rev TO fleetstream_flow;
GRANT INSERT ON flow_lag TO fleetstream_flow;  -- where its wall time went (pipelines/meter.py)

-- the dispatch listener (ingest/dispatch.py, store/plans.py)
GRANT SELECT, INSERT ON plans, dead_letters, dead_letter_digests TO fleetstream_dispatch;
GRANT USAGE ON SEQUENCE plan_seq TO fleetstream_dispatch;

-- the deliverer (delivery/deliverer.py)
GRANT SELECT ON alerts, stop_events, eta_updates TO fleetstream_deliver;
GRANT SELECT, INSERT, UPDATE ON delivery_cursors TO fleetstream_deliver;
GRANT INSERT ON delivery_failures TO fleetstream_deliver;

-- Tenant-scoped reading: the API and the readers. Tables and views: a table grant. Hypertables:
-- a grant on every column instead. A hypertable's chunks (in _timescaledb_internal, which every
-- role must be able to reach: TimescaleDB looks its types up there on every query) do not carry
-- its row-level security, and a new chunk copies the hypertable's table-level grants, so a
-- table grant would let a reader read every tenant's rows from a chunk. Column grants are not
-- copied to new chunks; those TimescaleDB passes on to the chunks of today are taken back by
-- fleetstream_close_chunks(). (A column added to these hypertables later needs its own grant.)
GRANT SELECT ON vehicles, vehicle_state, plans, stop_events, alert_actions,
    latest_positions, open_alerts, vehicle_current, dwell_by_zone, on_time_rate, h3_minute_stats,
    eta_errors, eta_accuracy TO fleetstream_tenant_scoped;
DO $$
DECLARE
    t text;
    cols text;
BEGIN
    FOREACH t IN ARRAY ARRAY['positions', 'temperatures', 'door_events', 'device_status', 'alerts',
                             'cell_minutes', 'eta_updates']
    LOOP
        SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) INTO cols
          FROM pg_attribute WHERE attrelid = t::regclass AND attnum > 0 AND NOT attisdropped;
        EXECUTE format('GRANT SELECT (%s) ON %I TO fleetstream_tenant_scoped', cols, t);
    END LOOP;
END
$$;

-- Takes every privilege the tenant-scoped roles hold on a chunk of a hypertable back (they read
-- through the hypertable, whose policies apply). A migration that grants on a hypertable calls it.
CREATE PROCEDURE fleetstream_close_chunks()
    LANGUAGE plpgsql SET search_path = pg_catalog, public
AS $$
DECLARE
    chunk regclass;
BEGIN
    FOR chunk IN
        SELECT c FROM timescaledb_information.hypertables h,
                      LATERAL show_chunks(format('%I.%I', h.hypertable_schema, h.hypertable_name)::regclass) c
         WHERE h.hypertable_schema = 'public'
    LOOP
        EXECUTE format('REVOKE ALL ON TABLE %s FROM fleetstream_tenant_scoped, fleetstream_api, fleetstream_readers',
                       chunk);
    END LOOP;
END
$$;
REVOKE ALL ON PROCEDURE fleetstream_close_chunks() FROM PUBLIC;

-- the API's writes: alert actions (api/queries.py), plans (store/plans.py), and the token lookup
GRANT UPDATE (acknowledged_at, acknowledged_by, owner, closed_at, closed_by, comments, updated_at, rev)
    ON alerts TO fleetstream_api;
GRANT INSERT ON alert_actions TO fleetstream_api;
GRANT INSERT ON plans TO fleetstream_api;
GRANT USAGE ON SEQUENCE event_rev, plan_seq, alert_actions_seq_seq TO fleetstream_api;
GRANT SELECT ON api_tokens TO fleetstream_api;

CALL fleetstream_close_chunks();
