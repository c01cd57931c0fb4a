"""Grafana for the docker-compose stack: provisioning files and the dashboard generator."""
