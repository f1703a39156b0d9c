"""The page's base map: the road network the simulator drives, as GeoJSON, built once.

One LineString per road (the two directions of a two-way road become one), coordinates
``[lon, lat]`` rounded to 6 decimals (about 0.1 m), and ``class``: ``major`` (motorway
to tertiary and their links) or ``minor``. Nothing is fetched: the network comes from
the OSM extract on disk (``models.roads``; OpenStreetMap data, ODbL, credited on the page).
"""

from __future__ import annotations

import gzip
import json
from typing import Any

from models.roads import RoadNetwork

__all__ = ["MAJOR_CLASSES", "roads_geojson", "roads_payload"]

MAJOR_CLASSES = frozenset({"motorway", "trunk", "primary", "secondary", "tertiary"})


def roads_geojson(network: RoadNetwork) -> dict[str, Any]:
    """The network as a GeoJSON FeatureCollection (see the module docstring), with its ``bbox``."""
    features = []
    seen: set[tuple[int, int]] = set()
    lons: list[float] = []
    lats: list[float] = []
    for u, v, data in network.graph.edges(data=True):
        if (v, u) in seen:
            continue
        seen.add((u, v))
        line = data.get("geometry") or (network.coords(u), network.coords(v))
        coords = [[round(lon, 6), round(lat, 6)] for lat, lon in line]
        lons += [c[0] for c in coords]
        lats += [c[1] for c in coords]
        highway = str(data.get("highway") or "")
        major = highway.removesuffix("_link") in MAJOR_CLASSES
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "LineString", "coordinates": coords},
                "properties": {"class": "major" if major else "minor"},
            }
        )
    bbox = [min(lons), min(lats), max(lons), max(lats)] if lons else None
    return {"type": "FeatureCollection", "bbox": bbox, "features": features}


def roads_payload(name: str, cache_dir: Any) -> bytes:
    """The gzip-compressed GeoJSON of network ``name`` (``helsinki`` or a .pbf path)."""
    network = RoadNetwork.load(name, cache_dir)
    body = json.dumps(roads_geojson(network), separators=(",", ":")).encode()
    return gzip.compress(body, compresslevel=6)
