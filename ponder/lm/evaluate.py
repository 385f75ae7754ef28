"""Evaluating a causal language model: validation loss on fixed windows at a chosen
test-time depth, and exact match of greedily generated answers on reasoning problems.

Validation windows come from `ponder.lm.text.windows` with a seed of their own
(`EVAL_SEED`), so every evaluation of every run reads the same text.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ponder.lm.text import windows
from ponder.models.driver import autocast_context

EVAL_SEED = 2**31 - 7  # validation windows: the same for every run and every evaluation


def _call(model, idx: torch.Tensor, r: int | None):
    return model(idx, r=r) if r is not None else model(idx)


@torch.no_grad()
def validation_loss(
    model, tokens: torch.Tensor, context: int, batch: int, batches: int, r: int | None = None, autocast: str = "none",
    rank: int = 0, world: int = 1, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """Mean next-token cross-entropy (nats) over `batches` windows of `batch` rows of
    `context` tokens of the (N,) `tokens`, at depth `r` (None: the model's default); under
    several ranks each evaluates its rows and `reduce` sums over ranks."""
    was = model.training
    model.eval()
    device = tokens.device
    total = torch.zeros(2, dtype=torch.float64, device=device)  # summed loss, tokens
    for k in range(batches):
        x, y = windows(tokens, context, batch, EVAL_SEED, k, rank, world)  # (b, T)
        with autocast_context(device, autocast):
            logits = _call(model, x, r).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum")
        total += torch.stack([loss.double(), torch.tensor(float(y.numel()), dtype=torch.float64, device=device)])
    model.train(was)
    if reduce is not None:
        total = reduce(total)
    return float(total[0] / total[1])


def key(r: int | None) -> str:
    """A depth's key in results: "default" for a model without a recurrence, else r."""
    return "default" if r is None else str(r)


def loss_by_recurrence(
    model, tokens: torch.Tensor, context: int, batch: int, batches: int, depths: list[int | None], default: int | None,
    per_character: bool, autocast: str = "none", **ranks,
) -> dict[str, Any]:
    """The record of a validation run: the loss at each of `depths` (None: a model
    without a recurrence), `loss` at depth `default`, the best depth when more than one
    was run, and for a character tokenizer (`per_character`) bits per character.
    `ranks`: `validation_loss`'s rank, world and reduce."""
    losses = {key(r): validation_loss(model, tokens, context, batch, batches, r=r, autocast=autocast, **ranks) for r in depths}
    loss = losses[key(default)]
    record: dict[str, Any] = {"loss": round(loss, 6), "loss_by_recurrence": {k: round(v, 6) for k, v in losses.items()}}
    if len(losses) > 1:
        best = min(losses, key=losses.get)
        record.update(best_recurrence=int(best), best_loss=round(losses[best], 6))
    if per_character:  # a token is a character: the loss in bits is bits per character
        record["bits_per_character"] = round(loss / math.log(2), 6)
    return record


def answers_by_recurrence(model, tokenizer, problems, depths: list[int | None], autocast: str = "none") -> dict[str, dict]:
    """`answer_accuracy` at each test-time depth, keyed like `loss_by_recurrence`."""
    return {key(r): answer_accuracy(model, tokenizer, problems, r=r, autocast=autocast) for r in depths}


@torch.no_grad()
def answer_accuracy(model, tokenizer, problems, r: int | None = None, autocast: str = "none", batch: int = 256) -> dict:
    """Exact match of the greedy continuation of each problem's prompt (up to the first
    newline) with its answer; overall and by problem depth. Each prompt is given after a
    newline, as every problem follows one in the training text (`at_line_start`).
    Problems are batched by prompt length, so no padding enters the model."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    newline = tokenizer.encode("\n")
    by_length: dict[int, list] = defaultdict(list)  # prompt tokens -> [(tokens, problem)]
    for problem in problems:
        tokens = tokenizer.encode("\n" + problem.prompt)
        by_length[len(tokens)].append((tokens, problem))
    right: dict[int, list[bool]] = defaultdict(list)
    for length, group in sorted(by_length.items()):
        longest = max(len(tokenizer.encode(p.answer)) for _, p in group) + len(newline)
        if length + longest > model.context:
            raise ValueError(f"a prompt of {length} tokens and an answer of up to {longest} exceed the model's context {model.context}")
        for start in range(0, len(group), batch):
            chunk = group[start : start + batch]
            idx = torch.tensor([tokens for tokens, _ in chunk], dtype=torch.long, device=device)  # (b, P)
            with autocast_context(device, autocast):
                out = model.generate(idx, longest, temperature=0.0, r=r)[:, length:]  # (b, new)
            for (_, problem), row in zip(chunk, out.tolist()):
                text = tokenizer.decode(row).split("\n", 1)[0]
                right[problem.depth].append(text == problem.answer)
    model.train(was)
    n = sum(len(v) for v in right.values())
    return {
        "n": n,
        "accuracy": round(sum(sum(v) for v in right.values()) / max(n, 1), 6),
        "by_depth": {str(d): round(sum(v) / len(v), 6) for d, v in sorted(right.items())},
    }
