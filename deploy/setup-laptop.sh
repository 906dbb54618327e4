#!/usr/bin/env bash
# Set up cuffwatch on a Debian 12 (bookworm) laptop at the training ground, without Docker:
# Mosquitto and InfluxDB 1.x from Debian, the gateway in /opt/cuffwatch/.venv as a hardened
# systemd service, broker users and ACLs generated from the roster.
#
#   sudo deploy/setup-laptop.sh [--config FILE] [--tls-dir DIR]
#
#   --config FILE   install FILE as /etc/cuffwatch/cuffwatch.toml (without it: keep the one
#                   there, or start from deploy/cuffwatch.example.toml; edit, run again)
#   --tls-dir DIR   ca.crt, server.crt, server.key for a TLS listener on 8883 (recommended:
#                   without it cuffs send their passwords in clear over the Wi-Fi)
#
# Run it with internet access (at home, before the session): it installs packages.
# Running it again is safe: passwords are kept, new cuffs get one, services restart.
#
# Grafana is not in Debian's archive. Dashboards: run the compose stack on a server
# (deploy/docker-compose.yml), or install Grafana from Grafana Labs' own Debian repository
# and point it at the provisioning from `cuffwatch dashboards build`.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONFIG_SRC=""
TLS_DIR=""

PREFIX=/opt/cuffwatch
VENV="${PREFIX}/.venv"
ETC=/etc/cuffwatch
SECRETS="${ETC}/secrets"
BROKER_AUTH=/etc/mosquitto/cuffwatch
INFLUX_DB=bfr
SERVICE_USER=cuffwatch

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }
say() { printf '\n== %s\n' "$*"; }
die() { printf 'setup-laptop: %s\n' "$*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --config) CONFIG_SRC="$(realpath "${2:?--config needs a file}")"; shift 2 ;;
    --tls-dir) TLS_DIR="$(realpath "${2:?--tls-dir needs a directory}")"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

[[ ${EUID} -eq 0 ]] || die "run as root (sudo $0 $*)"
[[ -r /etc/debian_version ]] || die "this script is for Debian (12, bookworm)"
[[ -z "${CONFIG_SRC}" || -f "${CONFIG_SRC}" ]] || die "no such config: ${CONFIG_SRC}"
if [[ -n "${TLS_DIR}" ]]; then
  for f in ca.crt server.crt server.key; do
    [[ -f "${TLS_DIR}/${f}" ]] || die "--tls-dir: ${TLS_DIR}/${f} is missing"
  done
fi

say "Debian packages: mosquitto, influxdb (1.x), python3-venv"
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends \
  mosquitto mosquitto-clients influxdb influxdb-client python3 python3-venv ca-certificates

say "Service user ${SERVICE_USER}"
if ! getent passwd "${SERVICE_USER}" > /dev/null; then
  useradd --system --home-dir /var/lib/cuffwatch --no-create-home \
    --shell /usr/sbin/nologin "${SERVICE_USER}"
fi

say "Gateway venv in ${VENV} (hash-locked dependencies)"
install -d -m 0755 "${PREFIX}"
[[ -x "${VENV}/bin/python" ]] || python3 -m venv "${VENV}"
"${VENV}/bin/pip" install --disable-pip-version-check --require-hashes \
  -r "${REPO}/requirements.lock"
"${VENV}/bin/pip" install --disable-pip-version-check --no-deps --force-reinstall "${REPO}"
install -d -m 0755 "${PREFIX}/deploy"
install -m 0644 "${REPO}/deploy/README.md" "${PREFIX}/deploy/README.md"

say "Configuration in ${ETC}"
install -d -o root -g "${SERVICE_USER}" -m 0750 "${ETC}" "${SECRETS}"
if [[ -n "${CONFIG_SRC}" && "${CONFIG_SRC}" != "${ETC}/cuffwatch.toml" ]]; then
  install -o root -g "${SERVICE_USER}" -m 0640 "${CONFIG_SRC}" "${ETC}/cuffwatch.toml"
elif [[ ! -f "${ETC}/cuffwatch.toml" ]]; then
  # First run without --config: start from the example (edit it, then run this again).
  install -o root -g "${SERVICE_USER}" -m 0640 "${REPO}/deploy/cuffwatch.example.toml" \
    "${ETC}/cuffwatch.toml"
fi
if [[ ! -f "${ETC}/cuffwatch.env" ]]; then
  # Read by systemd (as root) before it starts the service: overrides and secrets.
  install -o root -g root -m 0600 /dev/null "${ETC}/cuffwatch.env"
  cat > "${ETC}/cuffwatch.env" <<'ENV'
# CUFFWATCH_* overrides for this laptop (SPEC §7); secrets may go here too (mode 0600).
# Debian's InfluxDB is 1.x: the v1 API, database bfr, no authentication on localhost.
CUFFWATCH_INFLUX__API=v1
CUFFWATCH_INFLUX__URL=http://127.0.0.1:8086
ENV
fi

if ! grep -q '^CUFFWATCH_ACK__SECRET=' "${ETC}/cuffwatch.env"; then
  # The one-tap ack links' HMAC secret: made once, kept across runs (links stay valid).
  {
    echo "# HMAC secret of the one-tap ack links in pushes (written by setup-laptop.sh)"
    printf 'CUFFWATCH_ACK__SECRET=%s\n' \
      "$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')"
  } >> "${ETC}/cuffwatch.env"
fi

say "Broker users and ACLs from the roster (${BROKER_AUTH})"
install -d -o root -g mosquitto -m 0750 "${BROKER_AUTH}"
"${VENV}/bin/cuffwatch" broker-auth -c "${ETC}/cuffwatch.toml" \
  --out "${BROKER_AUTH}" \
  --credentials "${ETC}/broker-credentials.toml" \
  --gateway-password-file "${SECRETS}/gateway.password"
# Mosquitto reads these after dropping to its own user; the gateway reads its password.
chgrp mosquitto "${BROKER_AUTH}/passwd" "${BROKER_AUTH}/acl" "${BROKER_AUTH}/cuffwatch-auth.conf"
chgrp "${SERVICE_USER}" "${SECRETS}/gateway.password"
chmod 0640 "${SECRETS}/gateway.password"
ln -sf "${BROKER_AUTH}/cuffwatch-auth.conf" /etc/mosquitto/conf.d/cuffwatch-auth.conf

say "Mosquitto listeners and queue limits (/etc/mosquitto/conf.d/cuffwatch.conf)"
{
  cat <<'CONF'
# Written by cuffwatch's deploy/setup-laptop.sh. Why these values: see the comments in
# deploy/mosquitto/mosquitto.conf (stock queue limits silently drop a gateway's backlog).
max_queued_messages 2000000
max_queued_bytes 0
queue_qos0_messages false
max_inflight_messages 1000
persistent_client_expiration 1d
max_packet_size 1048576
set_tcp_nodelay true
autosave_interval 60
CONF
  if [[ -n "${TLS_DIR}" ]]; then
    cat <<'CONF'

# The gateway, on this laptop.
listener 1883 127.0.0.1

# Cuffs and staff apps over the training ground's Wi-Fi, TLS only.
listener 8883
cafile /etc/mosquitto/certs/cuffwatch/ca.crt
certfile /etc/mosquitto/certs/cuffwatch/server.crt
keyfile /etc/mosquitto/certs/cuffwatch/server.key
require_certificate false
CONF
  else
    cat <<'CONF'

# The gateway (on this laptop), cuffs and staff apps over the training ground's Wi-Fi.
# PLAIN MQTT: passwords cross the Wi-Fi in clear. Re-run setup-laptop.sh with --tls-dir to
# serve TLS on 8883 instead (1883 then stays on 127.0.0.1 for the gateway).
listener 1883 0.0.0.0
CONF
  fi
} > /etc/mosquitto/conf.d/cuffwatch.conf
if [[ -n "${TLS_DIR}" ]]; then
  install -d -o root -g mosquitto -m 0750 /etc/mosquitto/certs/cuffwatch
  install -o root -g mosquitto -m 0644 "${TLS_DIR}/ca.crt" "${TLS_DIR}/server.crt" \
    /etc/mosquitto/certs/cuffwatch/
  install -o root -g mosquitto -m 0640 "${TLS_DIR}/server.key" /etc/mosquitto/certs/cuffwatch/
else
  echo "WARNING: no --tls-dir: cuffs connect with plain MQTT on port 1883" >&2
fi
systemctl enable mosquitto
systemctl restart mosquitto

say "InfluxDB 1.x: database ${INFLUX_DB}"
systemctl enable --now influxdb
for _ in $(seq 1 60); do
  influx -execute 'SHOW DATABASES' > /dev/null 2>&1 && break
  sleep 1
done
influx -execute "CREATE DATABASE ${INFLUX_DB}"  # a no-op when it exists
echo "Debian's influxd listens on all interfaces without authentication: on a shared"
echo "network, set bind-address = \"127.0.0.1:8086\" under [http] in /etc/influxdb/influxdb.conf."

say "systemd unit"
install -m 0644 "${REPO}/deploy/systemd/cuffwatch.service" /etc/systemd/system/cuffwatch.service
systemctl daemon-reload
systemctl enable cuffwatch
systemctl restart cuffwatch

say "Check"
# shellcheck disable=SC2046 # the env file's lines are KEY=VALUE words by construction
env $(grep -Ev '^\s*(#|$)' "${ETC}/cuffwatch.env") \
  runuser -u "${SERVICE_USER}" -- "${VENV}/bin/cuffwatch" check -c "${ETC}/cuffwatch.toml" || {
  echo "setup: cuffwatch check failed: fix what its FAIL lines name, then run this again" >&2
  exit 1
}

cat <<DONE

Done. Files (passwords are in the secret ones, never printed):
  ${ETC}/cuffwatch.toml               configuration (edit, then re-run this script)
  ${ETC}/cuffwatch.env                environment overrides and secrets
  ${ETC}/broker-credentials.toml      every broker password: give each cuff its own (secret)
  ${SECRETS}/gateway.password         the gateway's broker password (secret)
  ${BROKER_AUTH}/{passwd,acl}         generated for Mosquitto
  /etc/mosquitto/conf.d/cuffwatch.conf, cuffwatch-auth.conf
Logs: journalctl -u cuffwatch -f    Health: curl -s http://127.0.0.1:9108/readyz
One-tap acks from pushes need a public HTTPS name for this laptop: see "One-tap acks" in
${PREFIX}/deploy/README.md (Caddy, deploy/caddy/), then set ack.public_url.
DONE
