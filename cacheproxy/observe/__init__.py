"""What the cache did, made visible: request log, metrics, admin API, dashboard."""
