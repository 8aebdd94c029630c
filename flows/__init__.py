"""Prefect orchestration of the voiceface pipeline, and the `voiceface` command line."""

import os

# Prefect's temporary local server sends telemetry heartbeats that race its own SQLite writes
# ("database is locked"); a data pipeline has no use for them.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
