"""``citybrain demo``: the whole loop on one machine (see :mod:`cloud.demo._run`).

:func:`run_demo` preflights the machine (data dir writable, API port free,
Redis and Mosquitto reachable or started from PATH on free ports), then runs
the narrated stages: city → import → pretrain → label (ORACLE) → train v1 +
publish → schedule → 3 edge agents on v1 → hard samples ingested → mine +
label (ORACLE) → train v2 + gate + publish → hot-swap to v2. Finished stages
are recorded in ``<data_dir>/demo/state.json``; a restart resumes.

Errors::

    cloud.errors.CitybrainError
    └── DemoError           a stage failed (exit 1)
        └── PreflightError  the machine is not ready (also InvalidInput: exit 2)
"""

from cloud.demo._errors import DemoError, PreflightError
from cloud.demo._run import SIZES, STAGES, Demo, DemoSize, run_demo

__all__ = ["SIZES", "STAGES", "Demo", "DemoError", "DemoSize", "PreflightError", "run_demo"]
