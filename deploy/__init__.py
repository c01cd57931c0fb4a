"""Deployment files that are generated or checked from the code (Grafana dashboards)."""
