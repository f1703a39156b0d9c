"""Learning from stored history: ETA speed profiles, detour factor and model
(``eta``), dwell baselines per H3 cell and hour of week (``dwell``)."""
