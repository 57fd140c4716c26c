#!/usr/bin/env bash
# Serve the embedded GeoPackage demo on http://127.0.0.1:5000 (no database server).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
make_venv test
exec .venv/bin/geoharbor serve -c config/demo.yml "$@"
