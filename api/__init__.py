"""The control tower: an HTTP API with live updates, Prometheus metrics and a live fleet page.

Built on what the engine already stores; it reads the views and tables the dataflow
writes, and writes only plans (through ``store.plans``) and the alert lifecycle.

``app.py``       the FastAPI application: routes, authentication, the page's static files
``tokens.py``    bearer tokens: create, hash, revoke, look up
``tenancy.py``   the one place that opens a tenant's database transaction
``queries.py``   the SQL behind every ``/v1`` endpoint, each scoped to one tenant
``live.py``      the Server-Sent Events stream, woken by LISTEN/NOTIFY
``health.py``    ``/healthz``, ``/readyz`` and ``/metrics``
``roads.py``     the page's base map: the road network as GeoJSON
``server.py``    ``fleetstream api``: uvicorn serving the application
"""
