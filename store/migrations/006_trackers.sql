-- Tracker identities: which vehicle a Teltonika or GT06 IMEI, an OsmAnd device id or an
-- OwnTracks user reports for (`fleetstream device add ... --protocol`). The front ends look
-- them up; an identity not here is refused and counted in tracker_refusals.
CREATE TABLE trackers (
    protocol    text        NOT NULL,   -- teltonika, gt06, osmand, owntracks
    identity    text        NOT NULL,   -- IMEI, OsmAnd id, OwnTracks MQTT user
    tenant      text        NOT NULL,
    vehicle_id  text        NOT NULL,
    profile     jsonb       NOT NULL DEFAULT '{}',  -- input mapping (ingest/protocols/common.py Profile)
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (protocol, identity)
);
CREATE INDEX trackers_vehicle ON trackers (tenant, vehicle_id);

-- Connections and messages refused because their identity is not provisioned, per identity.
CREATE TABLE tracker_refusals (
    protocol    text        NOT NULL,
    identity    text        NOT NULL,   -- as the device sent it (cut to 64 characters)
    attempts    bigint      NOT NULL,
    first_at    timestamptz NOT NULL,
    last_at     timestamptz NOT NULL,
    PRIMARY KEY (protocol, identity)
);
