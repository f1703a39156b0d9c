-- What a person needs to act on an alert or a stop event (pipelines/trackers/context.py):
-- where it happened, the stop's name, the plan version, a one-line summary; the value and
-- the threshold it crossed stay in details (value, threshold, unit). Views show H3 cells as
-- hex text (as MQTT, webhooks and the API do); dwell by zone per day; vehicle_current says
-- when a vehicle is idle or off duty instead of showing a stale ETA.

ALTER TABLE alerts
    ADD COLUMN lat          double precision,  -- where it began (degrees; NULL: no position known)
    ADD COLUMN lon          double precision,
    ADD COLUMN stop_name    text,              -- the plan's name of stop_id (NULL: none given)
    ADD COLUMN plan_version integer,           -- the vehicle's plan when it opened (NULL: no plan)
    ADD COLUMN summary      text;              -- one line, e.g. "van-007: reefer at 9.4 °C for 6 min, ..."
-- a hypertable: tenant-scoped readers read it through column grants (009_access.sql)
GRANT SELECT (lat, lon, stop_name, plan_version, summary) ON alerts TO fleetstream_tenant_scoped;

ALTER TABLE stop_events
    ADD COLUMN lat       double precision,  -- where the vehicle was (degrees)
    ADD COLUMN lon       double precision,
    ADD COLUMN stop_name text,
    ADD COLUMN summary   text;

-- whether the vehicle is on duty (pipelines/trackers/vehicle.py duty_at); NULL: not known
ALTER TABLE vehicle_state ADD COLUMN on_duty boolean;

-- Views: an H3 cell column changes type (bigint -> hex text), which only a new view can do.
DROP VIEW eta_accuracy;
DROP VIEW eta_errors;
DROP VIEW latest_positions;
DROP VIEW open_alerts;
DROP VIEW vehicle_current;
DROP VIEW dwell_by_zone;
DROP VIEW h3_minute_stats;

-- Control tower: the latest stored position of every vehicle.
CREATE VIEW latest_positions AS
SELECT v.tenant, v.vehicle_id, p.fix_time, p.lat, p.lon, p.speed_mps, p.heading_deg, to_hex(p.h3_cell) AS h3_cell,
       p.received_at
FROM vehicles v
CROSS JOIN LATERAL (
    SELECT * FROM positions p
    WHERE p.tenant = v.tenant AND p.vehicle_id = v.vehicle_id
    ORDER BY p.fix_time DESC
    LIMIT 1
) p;

-- Open alerts with their context and what people did about them.
CREATE VIEW open_alerts AS
SELECT tenant, vehicle_id, type, severity, stop_id, to_hex(h3_cell) AS h3_cell, start_time, details, detected_at, id,
       acknowledged_at, acknowledged_by, owner, closed_at, comments,
       summary, lat, lon, stop_name, plan_version,
       details->'value' AS value, details->'threshold' AS threshold, details->>'unit' AS unit
FROM alerts WHERE status = 'open';

-- Every vehicle now. activity: off_duty (its shift is over: at or reaching its last stop, or
-- the plan done or over by time and not driving), moving, idle (on duty, standing, no stop left
-- to do or no plan), stopped (standing with stops to do), unknown. The next stop, its window and
-- its ETA only while there is a stop to do and the vehicle is on duty: no stale ETAs.
CREATE VIEW vehicle_current AS
SELECT s.tenant, s.vehicle_id, s.last_fix_time, s.lat, s.lon, s.speed_mps, to_hex(s.h3_cell) AS h3_cell, s.motion,
       s.plan_version, w.next_stop_id, s.stops_remaining,
       (SELECT (st->>'window_end')::timestamptz
          FROM plans p, jsonb_array_elements(p.plan->'stops') st
         WHERE p.tenant = s.tenant AND p.vehicle_id = s.vehicle_id AND p.version = s.plan_version
           AND st->>'id' = w.next_stop_id) AS next_stop_window_end,
       (SELECT count(*) FROM alerts a WHERE a.tenant = s.tenant AND a.vehicle_id = s.vehicle_id
           AND a.status = 'open') AS open_alerts,
       s.last_received_at, s.late_readings, s.max_lateness_s, s.processed_at,
       (SELECT e.eta FROM eta_updates e
         WHERE e.tenant = s.tenant AND e.vehicle_id = s.vehicle_id AND e.stop_id = w.next_stop_id
           AND e.plan_version = s.plan_version AND NOT e.retracted
         ORDER BY e.at DESC LIMIT 1) AS next_stop_eta,
       EXISTS (SELECT 1 FROM alerts a WHERE a.tenant = s.tenant AND a.vehicle_id = s.vehicle_id
                  AND a.type = 'predicted_late' AND a.status = 'open') AS predicted_late,
       s.rev,
       (SELECT count(*) FROM alerts a WHERE a.tenant = s.tenant AND a.vehicle_id = s.vehicle_id
           AND a.status = 'open' AND a.closed_at IS NULL) AS open_exceptions,
       s.on_duty, w.activity
FROM vehicle_state s
CROSS JOIN LATERAL (
    SELECT x.activity, CASE WHEN x.activity IN ('off_duty', 'idle') THEN NULL ELSE s.next_stop_id END AS next_stop_id
      FROM (SELECT CASE
                       WHEN s.on_duty IS FALSE THEN 'off_duty'
                       WHEN s.motion = 'moving' THEN 'moving'
                       WHEN s.plan_version IS NULL OR coalesce(s.stops_remaining, 0) = 0 THEN 'idle'
                       WHEN s.motion = 'stopped' THEN 'stopped'
                       ELSE 'unknown'
                   END AS activity) x
) w;

-- Dwell by zone (H3 cell) and UTC day: service times at stops from departures, and standing
-- time from the per-minute aggregates of the same cell and day.
CREATE VIEW dwell_by_zone AS
SELECT d.tenant, to_hex(d.h3_cell) AS h3_cell, d.day, d.departures, d.mean_service_s, d.p90_service_s,
       coalesce(m.stopped_minutes, 0) AS stopped_minutes
FROM (SELECT tenant, h3_cell, time_bucket(INTERVAL '1 day', at) AS day, count(*) AS departures,
             avg(service_s) AS mean_service_s,
             percentile_cont(0.9) WITHIN GROUP (ORDER BY service_s) AS p90_service_s
        FROM stop_events WHERE kind = 'departure' AND NOT retracted AND h3_cell IS NOT NULL
       GROUP BY tenant, h3_cell, day) d
LEFT JOIN (SELECT tenant, h3_cell, time_bucket(INTERVAL '1 day', minute) AS day,
                  sum(stopped_s) / 60.0 AS stopped_minutes
             FROM cell_minutes GROUP BY tenant, h3_cell, day) m USING (tenant, h3_cell, day);

-- Per H3 cell and minute: vehicles seen, mean speed, standing minutes, alerts by type.
CREATE VIEW h3_minute_stats AS
SELECT m.tenant, to_hex(m.h3_cell) AS h3_cell, m.minute, m.vehicles, m.fixes, m.mean_speed_mps, m.dwell_minutes,
       coalesce(a.alerts, '{}'::jsonb) AS alerts
FROM (SELECT tenant, h3_cell, minute, count(*) AS vehicles, sum(fixes) AS fixes,
             sum(speed_sum) / nullif(sum(speed_n), 0) AS mean_speed_mps, sum(stopped_s) / 60.0 AS dwell_minutes
        FROM cell_minutes GROUP BY tenant, h3_cell, minute) m
LEFT JOIN LATERAL (
    SELECT jsonb_object_agg(type, n) AS alerts
      FROM (SELECT type, count(*) AS n FROM alerts x
             WHERE x.tenant = m.tenant AND x.h3_cell = m.h3_cell AND x.status <> 'retracted'
               AND x.start_time >= m.minute AND x.start_time < m.minute + INTERVAL '1 minute'
             GROUP BY type) t
) a ON true;

-- The error of the ETA in force 5, 15 and 30 minutes before each arrival (004_eta.sql).
CREATE VIEW eta_errors AS
SELECT a.tenant, a.vehicle_id, a.stop_id, a.plan_version, to_hex(a.h3_cell) AS h3_cell, a.at AS arrived_at,
       h.horizon_min, p.at AS predicted_at, p.eta, extract(epoch FROM p.eta - a.at)::double precision AS error_s,
       p.method
FROM stop_events a
CROSS JOIN (VALUES (5), (15), (30)) AS h (horizon_min)
JOIN LATERAL (
    SELECT e.at, e.eta, e.method FROM eta_updates e
     WHERE e.tenant = a.tenant AND e.vehicle_id = a.vehicle_id AND e.stop_id = a.stop_id AND NOT e.retracted
       AND e.at <= a.at - make_interval(mins => h.horizon_min)
       AND e.at > a.at - make_interval(mins => h.horizon_min + 60)
     ORDER BY e.at DESC LIMIT 1
) p ON true
WHERE a.kind = 'arrival' AND NOT a.retracted AND a.visit = 1;

-- ETA accuracy by horizon: over the whole tenant, per vehicle and per H3 cell of the stop.
CREATE VIEW eta_accuracy AS
SELECT tenant, horizon_min,
       CASE WHEN GROUPING(vehicle_id) = 0 THEN 'vehicle' WHEN GROUPING(h3_cell) = 0 THEN 'h3_cell' ELSE 'all' END
           AS level,
       CASE WHEN GROUPING(vehicle_id) = 0 THEN vehicle_id END AS vehicle_id,
       CASE WHEN GROUPING(h3_cell) = 0 THEN h3_cell END AS h3_cell,
       count(*) AS arrivals, avg(abs(error_s)) AS mae_s, avg(error_s) AS bias_s
FROM eta_errors
GROUP BY GROUPING SETS ((tenant, horizon_min), (tenant, horizon_min, vehicle_id), (tenant, horizon_min, h3_cell));

-- as 009_access.sql: views run with the privileges and row-level security of their reader
ALTER VIEW latest_positions SET (security_invoker = true);
ALTER VIEW open_alerts SET (security_invoker = true);
ALTER VIEW vehicle_current SET (security_invoker = true);
ALTER VIEW dwell_by_zone SET (security_invoker = true);
ALTER VIEW h3_minute_stats SET (security_invoker = true);
ALTER VIEW eta_errors SET (security_invoker = true);
ALTER VIEW eta_accuracy SET (security_invoker = true);
REVOKE ALL ON latest_positions, open_alerts, vehicle_current, dwell_by_zone, h3_minute_stats, eta_errors,
    eta_accuracy FROM PUBLIC;
GRANT SELECT ON latest_positions, open_alerts, vehicle_current, dwell_by_zone, h3_minute_stats, eta_errors,
    eta_accuracy TO fleetstream_tenant_scoped;

CALL fleetstream_close_chunks();
