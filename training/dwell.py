"""Dwell baselines: typical service time per H3 cell and hour of week, learned from history.

Source: departures in ``stop_events`` (arrival to departure, seconds, not retracted),
keyed by the stop's H3 cell (resolution ``h3_resolution``) and the UTC hour of week of
the arrival (0 = Monday 00:00-01:00). Each cell-hour keeps its sample count, median and
90th percentile; the engine uses a cell-hour only once it has ``baseline_min_samples``
departures (``pipelines/baselines.py``), otherwise the fixed ``long_dwell_s``.
"""

from __future__ import annotations

import psycopg

from store.db import one

__all__ = ["train_dwell_baselines"]

_TRAIN = """
INSERT INTO dwell_baselines (h3_cell, hour_of_week, samples, median_s, p90_s, computed_at)
SELECT h3_cell,
       ((extract(isodow FROM arrived AT TIME ZONE 'UTC')::int - 1) * 24
        + extract(hour FROM arrived AT TIME ZONE 'UTC')::int) AS hour_of_week,
       count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY service_s),
       percentile_cont(0.9) WITHIN GROUP (ORDER BY service_s), now()
  FROM (SELECT h3_cell, service_s, at - make_interval(secs => service_s) AS arrived
          FROM stop_events
         WHERE kind = 'departure' AND NOT retracted AND h3_cell IS NOT NULL AND service_s IS NOT NULL) d
 GROUP BY 1, 2
ON CONFLICT (h3_cell, hour_of_week) DO UPDATE SET
    samples = EXCLUDED.samples, median_s = EXCLUDED.median_s, p90_s = EXCLUDED.p90_s,
    computed_at = EXCLUDED.computed_at
"""


def train_dwell_baselines(conn: psycopg.Connection, min_samples: int) -> dict[str, int]:
    """Recompute ``dwell_baselines`` from every stored departure; returns counts of cell-hours."""
    with conn.transaction():
        conn.execute("DELETE FROM dwell_baselines")
        conn.execute(_TRAIN)
        total, usable = one(
            conn, "SELECT count(*), count(*) FILTER (WHERE samples >= %s) FROM dwell_baselines", (min_samples,)
        )
    return {"cell_hours": int(total), "usable_cell_hours": int(usable)}
