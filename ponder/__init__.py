"""ponder: recurrent-depth reasoning models that think by looping one small network."""

import os

__version__ = "0.1.0"

# OpenMP threads that wait for work spin for a while before they sleep. On a CPU shared
# with other jobs that spinning takes the cores the other threads need: beside two busy
# processes on 2 cores the default run takes 4.7 s per batch with libgomp's default spin
# (1.4 s alone) and 3.1 s with GOMP_SPINCOUNT=10000, which costs about 1% alone
# (records/contention-cpu). Set before torch loads OpenMP (so only when ponder is
# imported first, as the `ponder` command does); a user's own OpenMP settings win, and
# PONDER_OMP_DEFAULTS=0 turns this off.
if os.environ.get("PONDER_OMP_DEFAULTS", "1") != "0" and "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")


def load(name_or_folder):
    """A trained model for Python use: a bundled model's name (e.g. "sudoku"), a model
    folder from `ponder export`, or a run folder -> `ponder.pretrained.Reasoner` with
    `.solve(...)` and `.think(...)`."""
    from ponder.pretrained import load as _load

    return _load(name_or_folder)
