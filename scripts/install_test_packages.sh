#!/usr/bin/env bash
# Debian packages the TESTS use (`make setup-test`; the demo needs none): the real PACS (Orthanc,
# with its DICOMweb plugin for the gateway's STOW-RS tests), dcmtk (storescu), dicom3tools
# (dciodvfy), Prometheus (+promtool), Chromium for browser tests, a TTF font for Ultralytics plots,
# openssl (certificates made by the gRPC TLS tests), HAProxy (gRPC balancer in front of Triton
# replicas) and the Prometheus Pushgateway (batch metrics).
# Idempotent: installs only what is missing, so `make setup-test` stays quick once done.
set -euo pipefail
packages=(orthanc orthanc-dicomweb dcmtk dicom3tools prometheus chromium fonts-dejavu-core
          openssl haproxy prometheus-pushgateway)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts services on install; the project runs its own instances on private ports.
for svc in orthanc prometheus haproxy prometheus-pushgateway; do
  $SUDO service "$svc" stop >/dev/null 2>&1 || true
done
