"""ponder: recurrent-depth reasoning models that think by looping one small network."""

import os

__version__ = "0.1.0"

# OpenMP threads that wait for work spin for a while before they sleep. On a CPU shared
# with other jobs that spinning takes the cores the other threads need: the default run
# beside two busy processes on 2 cores went from 1.4 to 5 s per batch with libgomp's
# default spin and to about 3.2 s with GOMP_SPINCOUNT=10000, which costs 0-7% alone
# (records/contention-cpu). Set before torch loads OpenMP (so only when ponder is
# imported first, as the `ponder` command does); a user's own OpenMP settings win, and
# PONDER_OMP_DEFAULTS=0 turns this off.
if os.environ.get("PONDER_OMP_DEFAULTS", "1") != "0" and "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")
