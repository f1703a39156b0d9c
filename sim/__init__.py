"""Simulated fleets: vans driving real road networks with labelled anomalies
(``simulator``), published through the broker as devices would (``fleet``); and real
dense recordings as ground truth, thinned to what a sparse device sends (``recordings``)."""
