#!/bin/bash
# Runs once, right after the influxdb:2.7 container's first-start setup
# (/docker-entrypoint-initdb.d, with the influx CLI logged in as the admin token): a
# read-only InfluxDB 1.x-style login for Grafana, whose provisioned datasource speaks
# InfluxQL as user `grafana` with password $INFLUX_PASSWORD. The bucket `bfr` answers
# InfluxQL as database `bfr` through InfluxDB's automatic DBRP mapping.
set -euo pipefail

influx v1 auth create \
  --org "${DOCKER_INFLUXDB_INIT_ORG}" \
  --username grafana \
  --password "${GRAFANA_INFLUX_PASSWORD}" \
  --read-bucket "${DOCKER_INFLUXDB_INIT_BUCKET_ID}" \
  --description "Grafana (InfluxQL, read-only)"
