# The engine image used by compose.yaml (external broker and database).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY fleetstream fleetstream
COPY ingest ingest
COPY pipelines pipelines
COPY models models
COPY edge edge
COPY store store
COPY bench bench
RUN pip install --no-cache-dir '.[server]'
ENTRYPOINT []
