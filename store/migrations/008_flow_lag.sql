-- Where the analytics dataflow's wall time went, about once a second (pipelines/meter.py):
-- how far it ran behind the commits, and what took the time (the source's reads, the
-- vehicles' step and its late-data replays, timers, the sink, Bytewax's snapshots, garbage
-- collection). `fleetstream evaluate` reports the stalls from it.
CREATE TABLE flow_lag (
    at             timestamptz NOT NULL,  -- the wall clock at the end of the interval
    interval_s     real        NOT NULL,
    lag_s          real,                  -- wall time since the newest reading analysed was committed
    readings       integer     NOT NULL,
    batches        integer     NOT NULL,  -- vehicle batches the step ran
    corrections    integer     NOT NULL,  -- late-data replays run
    replayed       integer     NOT NULL,  -- history entries those replays re-processed
    source_s       real        NOT NULL,
    step_s         real        NOT NULL,
    notify_s       real        NOT NULL,
    sink_s         real        NOT NULL,
    snapshot_s     real        NOT NULL,  -- Bytewax serialising and storing the states after a snapshot
    other_s        real        NOT NULL,  -- Bytewax's other work between the phases
    gc_s           real        NOT NULL,  -- garbage collection (overlaps the phases it interrupted)
    max_gap_s      real        NOT NULL,  -- the longest wall time between two phases
    max_gap_after  text        NOT NULL   -- the phase it followed
);
SELECT create_hypertable('flow_lag', by_range('at', INTERVAL '1 day'), create_default_indexes => false);
CREATE INDEX flow_lag_at ON flow_lag (at);
