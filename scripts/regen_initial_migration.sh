#!/usr/bin/env bash
# Regenerate the initial catalog migration from cloud/catalog/models.py.
# Only while nothing has been released: after the first release, add new revisions instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${CITYBRAIN_VENV:-.venv}/bin/python
rm -f cloud/catalog/migrations/versions/0001_initial.py
tmp=$(mktemp -d)
$PY - "$tmp" <<'PY'
import sys
from alembic import command
from cloud.catalog.db import alembic_config
cfg = alembic_config(f"sqlite:///{sys.argv[1]}/gen.db")
command.revision(cfg, message="initial catalog", autogenerate=True, rev_id="0001")
PY
f=$(ls cloud/catalog/migrations/versions/0001_*.py)
[ "$f" = cloud/catalog/migrations/versions/0001_initial.py ] || mv "$f" cloud/catalog/migrations/versions/0001_initial.py
rm -rf "$tmp"
echo "wrote cloud/catalog/migrations/versions/0001_initial.py"
