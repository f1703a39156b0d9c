-- Live analytics: plans in, alerts / stop events / H3 minute aggregates out,
-- dwell baselines, delivery cursors, and the control tower's views.
-- Everything the dataflow writes is keyed by a deterministic id, so a replay
-- after a crash or a late-data correction overwrites instead of adding.

-- Plans from dispatch (CLI, MQTT): every revision kept. version is assigned by
-- the store (1, 2, ... per vehicle; an identical re-send keeps the version it had);
-- plan_seq numbers revisions in commit order so the dataflow can replay them.
CREATE TABLE plans (
    tenant       text        NOT NULL,
    vehicle_id   text        NOT NULL,
    version      integer     NOT NULL,
    plan         jsonb       NOT NULL,   -- Plan.to_dict() (pipelines/trackers/plan.py)
    digest       bytea       NOT NULL,   -- sha256 of the plan without its version: detects re-sends
    source       text        NOT NULL,   -- cli, mqtt, api
    received_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    plan_seq     bigint      NOT NULL UNIQUE,
    PRIMARY KEY (tenant, vehicle_id, version)
);

-- Alerts: one row per alert id, its latest version (open -> resolved, or retracted).
-- start_second is start_time cut to the second, the part of the start that the id hashes.
CREATE SEQUENCE event_rev;
CREATE TABLE alerts (
    start_second timestamptz NOT NULL,
    id           uuid        NOT NULL,
    tenant       text        NOT NULL,
    vehicle_id   text        NOT NULL,
    type         text        NOT NULL,
    severity     text        NOT NULL,
    status       text        NOT NULL,   -- open, resolved, retracted
    stop_id      text,
    h3_cell      bigint,                 -- where it began (resolution h3_resolution)
    start_time   timestamptz NOT NULL,   -- event time (fix time) the condition began
    end_time     timestamptz,            -- event time it ended; NULL while open
    details      jsonb       NOT NULL DEFAULT '{}',
    detected_at  timestamptz NOT NULL,   -- the fleet's event-time clock when first raised
    updated_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    rev          bigint      NOT NULL DEFAULT nextval('event_rev')  -- bumped on every change: delivery order
);
SELECT create_hypertable('alerts', by_range('start_second', INTERVAL '7 days'), create_default_indexes => false);
CREATE UNIQUE INDEX alerts_key ON alerts (id, start_second);
CREATE INDEX alerts_rev ON alerts (rev);
CREATE INDEX alerts_vehicle ON alerts (tenant, vehicle_id, start_second DESC);

-- Arrivals at and departures from planned stops; id = (vehicle, kind, stop, plan version, visit),
-- so a late-data correction moves "at" but keeps the row.
CREATE TABLE stop_events (
    id            uuid        PRIMARY KEY,
    kind          text        NOT NULL,  -- arrival, departure
    tenant        text        NOT NULL,
    vehicle_id    text        NOT NULL,
    stop_id       text        NOT NULL,
    plan_version  integer     NOT NULL,
    visit         integer     NOT NULL,
    at            timestamptz NOT NULL,  -- event time
    h3_cell       bigint,                -- the stop's cell (resolution h3_resolution)
    window_start  timestamptz,
    window_end    timestamptz,
    on_time       boolean,               -- arrivals: inside the stop's window (NULL: no window)
    service_s     real,                  -- departures: seconds since the arrival
    details       jsonb       NOT NULL DEFAULT '{}',
    retracted     boolean     NOT NULL DEFAULT false,
    detected_at   timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    rev           bigint      NOT NULL DEFAULT nextval('event_rev')
);
CREATE INDEX stop_events_rev ON stop_events (rev);
CREATE INDEX stop_events_vehicle ON stop_events (tenant, vehicle_id, at DESC);

-- One vehicle's contribution to one H3 cell in one minute (event time). The dataflow
-- rewrites a row when late data changes it; h3_minute_stats sums vehicles.
CREATE TABLE cell_minutes (
    minute      timestamptz NOT NULL,
    tenant      text        NOT NULL,
    h3_cell     bigint      NOT NULL,
    vehicle_id  text        NOT NULL,
    fixes       integer     NOT NULL,
    speed_sum   double precision NOT NULL,  -- m/s summed over fixes with a speed
    speed_n     integer     NOT NULL,
    stopped_s   double precision NOT NULL   -- seconds spent standing in the cell in that minute
);
SELECT create_hypertable('cell_minutes', by_range('minute', INTERVAL '7 days'), create_default_indexes => false);
CREATE UNIQUE INDEX cell_minutes_key ON cell_minutes (tenant, h3_cell, vehicle_id, minute);
CREATE INDEX cell_minutes_minute ON cell_minutes (minute DESC);

-- Typical dwell (service time) per H3 cell and hour of week (0 = Monday 00 UTC),
-- learned from departures by `fleetstream train dwell`.
CREATE TABLE dwell_baselines (
    h3_cell       bigint      NOT NULL,
    hour_of_week  smallint    NOT NULL,
    samples       integer     NOT NULL,
    median_s      real        NOT NULL,
    p90_s         real        NOT NULL,
    computed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (h3_cell, hour_of_week)
);

-- Delivery of alerts and stop events to MQTT and webhooks: one cursor per channel.
CREATE TABLE delivery_cursors (
    channel     text        PRIMARY KEY,   -- mqtt, webhook:<url>
    last_rev    bigint      NOT NULL DEFAULT 0,
    delivered   bigint      NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE delivery_failures (
    failed_at   timestamptz NOT NULL DEFAULT now(),
    channel     text        NOT NULL,
    rev         bigint      NOT NULL,
    event_id    uuid        NOT NULL,
    attempts    integer     NOT NULL,
    error       text        NOT NULL
);

-- The dataflow's per-vehicle state grows the analytics' view of the vehicle.
ALTER TABLE vehicle_state
    ADD COLUMN motion             text,      -- moving, stopped (NULL: not known yet)
    ADD COLUMN plan_version       integer,
    ADD COLUMN next_stop_id       text,
    ADD COLUMN stops_remaining    integer,
    ADD COLUMN late_readings      bigint NOT NULL DEFAULT 0,  -- released behind the reorder watermark
    ADD COLUMN corrected_readings bigint NOT NULL DEFAULT 0,  -- needed a replay of the trackers
    ADD COLUMN too_late_readings  bigint NOT NULL DEFAULT 0,  -- older than the correction window: not analysed
    ADD COLUMN corrections        bigint NOT NULL DEFAULT 0,
    ADD COLUMN max_lateness_s     real   NOT NULL DEFAULT 0;

-- ------------------------------------------------------------------ control tower views

-- Open alerts, newest first.
CREATE VIEW open_alerts AS
SELECT tenant, vehicle_id, type, severity, stop_id, h3_cell, start_time, details, detected_at, id
FROM alerts WHERE status = 'open';

-- Every vehicle now: last fix, motion, plan progress, open alerts.
CREATE VIEW vehicle_current AS
SELECT s.tenant, s.vehicle_id, s.last_fix_time, s.lat, s.lon, s.speed_mps, s.h3_cell, s.motion,
       s.plan_version, s.next_stop_id, s.stops_remaining,
       (SELECT (st->>'window_end')::timestamptz
          FROM plans p, jsonb_array_elements(p.plan->'stops') st
         WHERE p.tenant = s.tenant AND p.vehicle_id = s.vehicle_id AND p.version = s.plan_version
           AND st->>'id' = s.next_stop_id) AS next_stop_window_end,
       (SELECT count(*) FROM alerts a WHERE a.tenant = s.tenant AND a.vehicle_id = s.vehicle_id
           AND a.status = 'open') AS open_alerts,
       s.last_received_at, s.late_readings, s.max_lateness_s, s.processed_at
FROM vehicle_state s;

-- Dwell by zone (H3 cell): service times at stops from departures, and standing time
-- from the per-minute aggregates.
CREATE VIEW dwell_by_zone AS
SELECT d.tenant, d.h3_cell, d.departures, d.mean_service_s, d.p90_service_s,
       coalesce(m.stopped_minutes, 0) AS stopped_minutes
FROM (SELECT tenant, h3_cell, count(*) AS departures, avg(service_s) AS mean_service_s,
             percentile_cont(0.9) WITHIN GROUP (ORDER BY service_s) AS p90_service_s
        FROM stop_events WHERE kind = 'departure' AND NOT retracted AND h3_cell IS NOT NULL
       GROUP BY tenant, h3_cell) d
LEFT JOIN (SELECT tenant, h3_cell, sum(stopped_s) / 60.0 AS stopped_minutes
             FROM cell_minutes GROUP BY tenant, h3_cell) m USING (tenant, h3_cell);

-- On-time rate: share of arrivals inside their stop's window, per vehicle and UTC day.
CREATE VIEW on_time_rate AS
SELECT tenant, vehicle_id, time_bucket(INTERVAL '1 day', at) AS day,
       count(*) FILTER (WHERE on_time IS NOT NULL) AS arrivals_with_window,
       count(*) FILTER (WHERE on_time) AS on_time,
       count(*) FILTER (WHERE on_time IS NOT NULL AND NOT on_time) AS off_window,
       (count(*) FILTER (WHERE on_time))::double precision
           / nullif(count(*) FILTER (WHERE on_time IS NOT NULL), 0) AS on_time_rate
FROM stop_events WHERE kind = 'arrival' AND NOT retracted
GROUP BY tenant, vehicle_id, day;

-- Per H3 cell and minute: vehicles seen, mean speed, standing minutes, alerts by type.
CREATE VIEW h3_minute_stats AS
SELECT m.tenant, m.h3_cell, m.minute, m.vehicles, m.fixes, m.mean_speed_mps, m.dwell_minutes,
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
