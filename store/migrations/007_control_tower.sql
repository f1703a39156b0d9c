-- Control tower: API tokens, the alert lifecycle for people, and the change log's reach
-- to vehicle state (the live stream's positions).

-- Bearer tokens of the HTTP API: one tenant and one role each. Only a hash is stored;
-- id is a short public handle (the hash's first 12 hex digits) for listing and revoking.
CREATE TABLE api_tokens (
    id          text        PRIMARY KEY,
    token_hash  bytea       NOT NULL UNIQUE,            -- sha256 of the token
    tenant      text        NOT NULL,
    role        text        NOT NULL CHECK (role IN ('viewer', 'dispatcher')),
    name        text        NOT NULL DEFAULT '',        -- who or what holds it (shown as the actor of alert actions)
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_tokens_tenant ON api_tokens (tenant);

-- The alert lifecycle for people, beside the condition's own status (open / resolved /
-- retracted, the dataflow's): acknowledged, owned, commented, closed by a person. The
-- dataflow's upserts never touch these columns; an action bumps rev like any change,
-- under the change log's lock (store/events.py), so the deliverer publishes it.
ALTER TABLE alerts
    ADD COLUMN acknowledged_at timestamptz,
    ADD COLUMN acknowledged_by text,
    ADD COLUMN owner           text,
    ADD COLUMN closed_at       timestamptz,
    ADD COLUMN closed_by       text,
    ADD COLUMN comments        integer NOT NULL DEFAULT 0;

-- Every action, in order: the audit trail and the comments.
CREATE TABLE alert_actions (
    seq       bigserial   PRIMARY KEY,
    alert_id  uuid        NOT NULL,
    tenant    text        NOT NULL,
    at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor     text        NOT NULL,                     -- the token's name and id
    action    text        NOT NULL CHECK (action IN ('acknowledge', 'assign', 'comment', 'close', 'reopen')),
    owner     text,
    comment   text
);
CREATE INDEX alert_actions_alert ON alert_actions (tenant, alert_id, seq);

-- Vehicle state joins the change log: each upsert takes a new rev, so a live client that
-- reconnects reads every vehicle whose state changed since its last event.
ALTER TABLE vehicle_state ADD COLUMN rev bigint NOT NULL DEFAULT nextval('event_rev');
CREATE INDEX vehicle_state_rev ON vehicle_state (tenant, rev);
CREATE INDEX alerts_tenant_rev ON alerts (tenant, rev);
CREATE INDEX stop_events_tenant_rev ON stop_events (tenant, rev);
CREATE INDEX eta_updates_tenant_rev ON eta_updates (tenant, rev);
CREATE INDEX alerts_open ON alerts (tenant, start_second DESC) WHERE status = 'open';

-- Open alerts, with what people did about them.
CREATE OR REPLACE VIEW open_alerts AS
SELECT tenant, vehicle_id, type, severity, stop_id, h3_cell, start_time, details, detected_at, id,
       acknowledged_at, acknowledged_by, owner, closed_at, comments
FROM alerts WHERE status = 'open';

-- Every vehicle now, plus its change-log rev and its open exceptions (open alerts nobody closed).
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
                  AND a.type = 'predicted_late' AND a.status = 'open') AS predicted_late,
       s.rev,
       (SELECT count(*) FROM alerts a WHERE a.tenant = s.tenant AND a.vehicle_id = s.vehicle_id
           AND a.status = 'open' AND a.closed_at IS NULL) AS open_exceptions
FROM vehicle_state s;
