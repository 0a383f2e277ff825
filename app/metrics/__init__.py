"""Prometheus instruments: in memory, updated from the request path, read by ``/metrics``."""
