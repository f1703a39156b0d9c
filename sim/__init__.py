"""Simulated fleets: vans driving real road networks with labelled anomalies
(``simulator``), published through the broker as devices would (``fleet``)."""
