"""The names a config may use, read from the registries that own them (model families,
halting rules, gradient modes, tasks, fixed-point solvers and their gradients, RNN
cells and their solvers), so no list is repeated in `ponder.config`."""

from __future__ import annotations

from ponder.config import RunConfig
from ponder.errors import PonderInputError


def name_choices() -> dict[str, tuple[str, ...]]:
    """config key -> the names its registry holds."""
    from ponder.lm.models import LM_FAMILIES
    from ponder.lm.text import TEXT_TASKS
    from ponder.models import REGISTRY
    from ponder.models.halting import LOOP_HALTING, READOUTS, SEGMENT_HALTING
    from ponder.nn.blocks import RNN_CELLS, RNN_SOLVERS
    from ponder.solvers import BACKWARDS, GRAD_MODES, METHODS
    from ponder.tasks.builders import BUILDERS

    return {
        "model.family": tuple(REGISTRY) + tuple(LM_FAMILIES),
        "model.halting": tuple(SEGMENT_HALTING),
        "model.loop_halting": tuple(LOOP_HALTING),
        "model.halt_readout": READOUTS,
        "model.grad_mode": ("auto", *GRAD_MODES),  # auto: the family's own
        "model.solver": tuple(METHODS),
        "model.solver_backward": tuple(BACKWARDS),
        "model.cell": RNN_CELLS,
        "model.rnn_solver": RNN_SOLVERS,
        "task.name": tuple(BUILDERS) + tuple(TEXT_TASKS),
    }


def check_names(cfg: RunConfig, source: str = "config") -> RunConfig:
    """Raise a one-line error for a family, task or solver that no registry holds."""
    for key, allowed in name_choices().items():
        section, _, name = key.partition(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            raise PonderInputError(f"{source}: config key '{key}': expected one of {', '.join(allowed)}, got {value!r}")
    from ponder.lm.models import LM_FAMILIES
    from ponder.lm.text import TEXT_TASKS

    language_model, text_task = cfg.model.family in LM_FAMILIES, cfg.task.name in TEXT_TASKS
    if language_model != text_task:
        kinds = ("a language model", "a text task") if language_model else ("a puzzle model", "a puzzle task")
        raise PonderInputError(
            f"{source}: model.family={cfg.model.family} is {kinds[0]} but task.name={cfg.task.name} is not {kinds[1]}; "
            f"language models ({', '.join(LM_FAMILIES)}) train on text tasks ({', '.join(TEXT_TASKS)})"
        )
    return cfg
