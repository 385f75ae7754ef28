"""Reading a recurrent language model's latent state after every iteration
("Latent Chain-of-Thought? Decoding the Depth-Recurrent Transformer").

For a prompt, the model runs r iterations; after each, the state at the last position is
decoded two ways:

    logit lens   the final norm and the head applied to the state directly
    coda lens    the coda, then the final norm and the head (what the model itself does
                 after its last iteration)

and the rank of a token of interest in each decoded distribution is recorded (rank 1:
the likeliest). The tokens of interest: the one the model finally predicts (after all r
iterations), and for an arithmetic prompt (`37+5*2=`) the first character of each
intermediate result of its left-to-right evaluation (42, then 84): if the state held
those results on the way, their ranks would drop at some iteration and rise again.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import torch

from ponder.errors import PonderInputError


@dataclass
class ProbeResult:
    prompt: str
    recurrence: int
    predicted: str  # the token the model predicts after all r iterations
    ranks: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # lens -> token label -> rank after iteration 1..r

    def to_dict(self) -> dict:
        return asdict(self)


def intermediate_results(prompt: str) -> list[int]:
    """The value after each operation of an arithmetic prompt evaluated strictly left to
    right ("37+5*2=" -> [42, 84], the last being the answer; surrounding whitespace
    ignored); [] for other prompts."""
    match = re.fullmatch(r"(\d+)((?:[-+*]\d+)+)=", prompt.strip())
    if match is None:
        return []
    value, values = int(match.group(1)), []
    for op, operand in re.findall(r"([-+*])(\d+)", match.group(2)):
        value = value + int(operand) if op == "+" else value - int(operand) if op == "-" else value * int(operand)
        values.append(value)
    return values


@torch.no_grad()
def probe(model, tokenizer, prompt: str, r: int) -> ProbeResult:
    """Ranks, per iteration and lens, of the finally predicted token and (arithmetic) of
    the first character of each intermediate result, at the prompt's last position."""
    if not getattr(model, "recurrent", False):
        raise PonderInputError(f"probe: a {type(model).__name__} has no recurrent core to read; probe a recurrent-lm or attractor-lm run")
    ids = tokenizer.encode(prompt)
    if not ids:
        raise PonderInputError("probe: the prompt is empty")
    if len(ids) > model.context:
        raise PonderInputError(f"probe: the prompt has {len(ids)} tokens, more than the model's context {model.context}")
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    idx = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
    out = model(idx, r=r, return_states=True)
    final = int(out.logits[0, -1].argmax())
    targets = {f"predicted {tokenizer.decode([final])!r}": final}
    for value in intermediate_results(prompt):
        first = tokenizer.encode(str(value))[0]
        targets.setdefault(f"intermediate {value}", first)
    ranks: dict[str, dict[str, list[int]]] = {"logit lens": {k: [] for k in targets}, "coda lens": {k: [] for k in targets}}
    for state in out.states:  # (1, T, D) after each iteration
        for lens, decode in (("logit lens", model.head_logits), ("coda lens", model.decode_state)):
            logits = decode(state)[0, -1]  # (V,)
            order = logits.argsort(descending=True)
            position = torch.empty_like(order)
            position[order] = torch.arange(order.numel(), device=order.device)
            for label, token in targets.items():
                ranks[lens][label].append(int(position[token]) + 1)
    model.train(was)
    return ProbeResult(prompt=prompt, recurrence=len(out.states), predicted=tokenizer.decode([final]), ranks=ranks)


def plot_probe(result: ProbeResult, path) -> None:
    """Rank (log scale) of each token of interest against the iteration, one panel per lens."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, (lens, by_token) in zip(axes, result.ranks.items()):
        for label, ranks in by_token.items():
            ax.plot(range(1, len(ranks) + 1), ranks, "o-", label=label)
        ax.set(yscale="log", xlabel="iteration", ylabel="rank (1 = likeliest)", title=f"{lens}: {result.prompt!r}")
        ax.invert_yaxis()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
