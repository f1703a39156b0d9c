-- A device's seq is one counter across its streams, enforced by a key; dead letters are
-- de-duplicated by a key too; the deliverer counts the changes nobody was subscribed to.

-- One row per device seq: which reading holds it (its fix time and stream). The gateway's
-- writer claims every reading's seq here (INSERT ... ON CONFLICT DO NOTHING) in the same
-- transaction as the reading, so a seq already held by another fix time or stream is a
-- conflict, also between gateway shards. (The hypertables' unique keys must include the time
-- column, so they cannot say this themselves.)
CREATE TABLE device_seqs (
    tenant      text        NOT NULL,
    vehicle_id  text        NOT NULL,
    seq         bigint      NOT NULL,
    fix_time    timestamptz NOT NULL,
    stream      "char"      NOT NULL,  -- g = positions, t = temperatures, d = door_events
    PRIMARY KEY (tenant, vehicle_id, seq)
);
INSERT INTO device_seqs SELECT tenant, vehicle_id, seq, fix_time, 'g' FROM positions ON CONFLICT DO NOTHING;
INSERT INTO device_seqs SELECT tenant, vehicle_id, seq, fix_time, 't' FROM temperatures ON CONFLICT DO NOTHING;
INSERT INTO device_seqs SELECT tenant, vehicle_id, seq, fix_time, 'd' FROM door_events ON CONFLICT DO NOTHING;

-- The digests of the dead letters stored: claimed in the transaction that stores one, so of
-- two shards storing one redelivered bad message, the second waits and skips (a lookup raced).
CREATE TABLE dead_letter_digests (
    digest bytea PRIMARY KEY  -- sha256 of topic, payload and batch index (dead_letters.digest)
);
INSERT INTO dead_letter_digests SELECT DISTINCT digest FROM dead_letters ON CONFLICT DO NOTHING;
DROP INDEX IF EXISTS dead_letters_digest;

-- MQTT PUBACK 0x10 (no matching subscribers): the broker dropped the change, nobody got it
ALTER TABLE delivery_cursors ADD COLUMN unheard bigint NOT NULL DEFAULT 0;
