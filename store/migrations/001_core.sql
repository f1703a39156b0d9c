-- Raw readings, dead letters and gateway bookkeeping.
-- Times are timestamptz (UTC). fix_time: when the device took the reading;
-- device_time: the device clock when it sent it; received_at: the gateway clock.
-- (shard, shard_seq) numbers rows in commit order per gateway shard so the
-- dataflow can replay exactly what it has not yet processed.

CREATE TABLE positions (
    fix_time     timestamptz      NOT NULL,
    tenant       text             NOT NULL,
    vehicle_id   text             NOT NULL,
    seq          bigint           NOT NULL,
    lat          double precision NOT NULL,  -- degrees WGS84
    lon          double precision NOT NULL,  -- degrees WGS84
    speed_mps    real,                       -- m/s
    heading_deg  real,                       -- degrees clockwise from north
    accuracy_m   real,                       -- metres, horizontal
    alt_m        real,                       -- metres
    h3_cell      bigint           NOT NULL,  -- H3 index at resolution 9 (as integer)
    device_time  timestamptz,
    received_at  timestamptz      NOT NULL,
    shard        smallint         NOT NULL,
    shard_seq    bigint           NOT NULL
);
SELECT create_hypertable('positions', by_range('fix_time', INTERVAL '1 day'), create_default_indexes => false);
-- dedup key, "track of one vehicle over a time range" and "latest position per vehicle"
CREATE UNIQUE INDEX positions_key ON positions (tenant, vehicle_id, fix_time DESC, seq);
CREATE INDEX positions_replay ON positions (shard, shard_seq);

CREATE TABLE temperatures (
    fix_time     timestamptz      NOT NULL,
    tenant       text             NOT NULL,
    vehicle_id   text             NOT NULL,
    seq          bigint           NOT NULL,
    sensor       text             NOT NULL,
    celsius      real             NOT NULL,  -- degrees Celsius
    device_time  timestamptz,
    received_at  timestamptz      NOT NULL,
    shard        smallint         NOT NULL,
    shard_seq    bigint           NOT NULL
);
SELECT create_hypertable('temperatures', by_range('fix_time', INTERVAL '7 days'), create_default_indexes => false);
CREATE UNIQUE INDEX temperatures_key ON temperatures (tenant, vehicle_id, fix_time DESC, seq);
CREATE INDEX temperatures_replay ON temperatures (shard, shard_seq);

CREATE TABLE door_events (
    fix_time     timestamptz      NOT NULL,
    tenant       text             NOT NULL,
    vehicle_id   text             NOT NULL,
    seq          bigint           NOT NULL,
    door         text             NOT NULL,
    is_open      boolean          NOT NULL,
    device_time  timestamptz,
    received_at  timestamptz      NOT NULL,
    shard        smallint         NOT NULL,
    shard_seq    bigint           NOT NULL
);
SELECT create_hypertable('door_events', by_range('fix_time', INTERVAL '7 days'), create_default_indexes => false);
CREATE UNIQUE INDEX door_events_key ON door_events (tenant, vehicle_id, fix_time DESC, seq);
CREATE INDEX door_events_replay ON door_events (shard, shard_seq);

CREATE TABLE device_status (
    sent_at      timestamptz NOT NULL,
    tenant       text        NOT NULL,
    vehicle_id   text        NOT NULL,
    state        text        NOT NULL,
    details      jsonb       NOT NULL DEFAULT '{}',
    received_at  timestamptz NOT NULL
);
SELECT create_hypertable('device_status', by_range('sent_at', INTERVAL '7 days'), create_default_indexes => false);
CREATE UNIQUE INDEX device_status_key ON device_status (tenant, vehicle_id, sent_at DESC, state);

CREATE TABLE dead_letters (
    received_at  timestamptz NOT NULL,
    topic        text        NOT NULL,
    reason       text        NOT NULL,   -- stable code: bad_json, out_of_range, conflict, ...
    detail       text        NOT NULL,
    batch_index  integer,                -- reading's index inside a batch message, else NULL
    payload      bytea       NOT NULL,   -- the raw payload, cut to dead_letter_raw_cap bytes
    payload_size integer     NOT NULL,   -- the raw payload's full size in bytes
    digest       bytea       NOT NULL,   -- sha256 of topic, payload and index: a redelivery is stored once
    shard        smallint    NOT NULL
);
SELECT create_hypertable('dead_letters', by_range('received_at', INTERVAL '7 days'));
CREATE INDEX dead_letters_digest ON dead_letters (digest);

CREATE TABLE vehicles (
    tenant      text        NOT NULL,
    vehicle_id  text        NOT NULL,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, vehicle_id)
);

CREATE TABLE gateway_shards (
    shard        smallint    PRIMARY KEY,
    last_seq     bigint      NOT NULL DEFAULT 0,  -- highest shard_seq handed out and committed
    stored       bigint      NOT NULL DEFAULT 0,  -- readings inserted
    duplicates   bigint      NOT NULL DEFAULT 0,  -- identical readings seen again (not stored again)
    conflicts    bigint      NOT NULL DEFAULT 0,  -- same key, different content (dead-lettered)
    dead_letters bigint      NOT NULL DEFAULT 0,
    messages     bigint      NOT NULL DEFAULT 0,  -- MQTT messages committed and acknowledged
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Written by the dataflow: per-vehicle state (idempotent upserts).
CREATE TABLE vehicle_state (
    tenant           text        NOT NULL,
    vehicle_id       text        NOT NULL,
    last_fix_time    timestamptz,
    lat              double precision,
    lon              double precision,
    speed_mps        real,
    h3_cell          bigint,
    gps_count        bigint      NOT NULL,
    temp_count       bigint      NOT NULL,
    door_count       bigint      NOT NULL,
    last_celsius     real,
    open_doors       text[]      NOT NULL DEFAULT '{}',
    last_received_at timestamptz,
    processed_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (tenant, vehicle_id)
);

-- Control tower: the latest stored position of every vehicle.
CREATE VIEW latest_positions AS
SELECT v.tenant, v.vehicle_id, p.fix_time, p.lat, p.lon, p.speed_mps, p.heading_deg, p.h3_cell, p.received_at
FROM vehicles v
CROSS JOIN LATERAL (
    SELECT * FROM positions p
    WHERE p.tenant = v.tenant AND p.vehicle_id = v.vehicle_id
    ORDER BY p.fix_time DESC
    LIMIT 1
) p;
