-- Live ETAs: every prediction the dataflow emitted, their accuracy once the vehicle
-- arrived, and the control tower's "next stop ETA" and "predicted late".

-- One row per ETA update: a new ETA for one remaining stop, predicted at fix time "at".
-- id = (vehicle, stop, plan version, fix time), so a replay rewrites the same row; a
-- late-data correction that disproves a prediction marks it retracted.
CREATE TABLE eta_updates (
    at            timestamptz NOT NULL,   -- when predicted: the fix time (event time)
    id            uuid        NOT NULL,
    tenant        text        NOT NULL,
    vehicle_id    text        NOT NULL,
    stop_id       text        NOT NULL,
    plan_version  integer     NOT NULL,
    eta           timestamptz NOT NULL,   -- predicted arrival
    h3_cell       bigint,                 -- the stop's cell (resolution h3_resolution)
    window_end    timestamptz,            -- the stop's window end (NULL: no window)
    method        text,                   -- route, network, straight
    state         text,                   -- moving, parked, traffic
    details       jsonb       NOT NULL DEFAULT '{}',  -- remaining metres, profile / model / naive estimates
    retracted     boolean     NOT NULL DEFAULT false,
    detected_at   timestamptz NOT NULL,   -- the fleet clock when emitted
    updated_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    rev           bigint      NOT NULL DEFAULT nextval('event_rev')  -- delivery order (shared with alerts)
);
SELECT create_hypertable('eta_updates', by_range('at', INTERVAL '1 day'), create_default_indexes => false);
CREATE UNIQUE INDEX eta_updates_key ON eta_updates (id, at);
CREATE INDEX eta_updates_rev ON eta_updates (rev);
CREATE INDEX eta_updates_stop ON eta_updates (tenant, vehicle_id, stop_id, at DESC);

-- The error of the ETA in force 5, 15 and 30 minutes before each arrival (first visit,
-- not retracted): the latest prediction for that stop made at or before arrival - horizon,
-- and no more than 60 minutes before that (an older one is stale: the vehicle was not
-- reporting). ETAs are re-emitted only when they move, so the latest one is the one that
-- was showing then. error_s = eta - arrival (positive: predicted too late).
CREATE VIEW eta_errors AS
SELECT a.tenant, a.vehicle_id, a.stop_id, a.plan_version, a.h3_cell, a.at AS arrived_at, h.horizon_min,
       p.at AS predicted_at, p.eta, extract(epoch FROM p.eta - a.at)::double precision AS error_s, p.method
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

-- ETA accuracy by horizon: over the whole tenant (level = 'all'), per vehicle and per
-- H3 cell of the stop. mae_s = mean |error|, bias_s = mean error (positive: ETAs too late).
CREATE VIEW eta_accuracy AS
SELECT tenant, horizon_min,
       CASE WHEN GROUPING(vehicle_id) = 0 THEN 'vehicle' WHEN GROUPING(h3_cell) = 0 THEN 'h3_cell' ELSE 'all' END
           AS level,
       CASE WHEN GROUPING(vehicle_id) = 0 THEN vehicle_id END AS vehicle_id,
       CASE WHEN GROUPING(h3_cell) = 0 THEN h3_cell END AS h3_cell,
       count(*) AS arrivals, avg(abs(error_s)) AS mae_s, avg(error_s) AS bias_s
FROM eta_errors
GROUP BY GROUPING SETS ((tenant, horizon_min), (tenant, horizon_min, vehicle_id), (tenant, horizon_min, h3_cell));

-- Every vehicle now, plus its next stop's current ETA and whether a stop is predicted late.
CREATE OR REPLACE VIEW vehicle_current AS
SELECT s.tenant, s.vehicle_id, s.last_fix_time, s.lat, s.lon, s.speed_mps, s.h3_cell, s.motion,
       s.plan_version, s.next_stop_id, s.stops_remaining,
       (SELECT (st->>'window_end')::timestamptz
          FROM plans p, jsonb_array_elements(p.plan->'stops') st
         WHERE p.tenant = s.tenant AND p.vehicle_id = s.vehicle_id AND p.version = s.plan_version
           AND st->>'id' = s.next_stop_id) AS next_stop_window_end,
       (SELECT count(*) FROM alerts a WHERE a.tenant = s.tenant AND a.vehicle_id = s.vehicle_id
           AND a.status = 'open') AS open_alerts,
       s.last_received_at, s.late_readings, s.max_lateness_s, s.processed_at,
       (SELECT e.eta FROM eta_updates e
         WHERE e.tenant = s.tenant AND e.vehicle_id = s.vehicle_id AND e.stop_id = s.next_stop_id
           AND e.plan_version = s.plan_version AND NOT e.retracted
         ORDER BY e.at DESC LIMIT 1) AS next_stop_eta,
       EXISTS (SELECT 1 FROM alerts a WHERE a.tenant = s.tenant AND a.vehicle_id = s.vehicle_id
                  AND a.type = 'predicted_late' AND a.status = 'open') AS predicted_late
FROM vehicle_state s;
