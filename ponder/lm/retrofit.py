"""Retrofitting recurrence into a trained non-recurrent language model.

"Teaching Pretrained Language Models to Think Deeper with Retrofitted Recurrence" turns a
pretrained transformer into a prelude / recurrent core / coda model by reusing its layers,
then keeps training with a growing recurrence. Here:

`load_gpt2_folder`    a Hugging Face GPT-2 folder (config.json + model.safetensors) as a
                      ponder `GPT` with GPT-2's options, giving GPT-2's logits exactly.
`retrofit`            a `RecurrentLM` whose prelude, core and coda are copies of chosen
                      layers of a `GPT`, with its embedding, final norm and head, and an
                      adapter that starts as adapter([s, e]) = e. At r = 1, with every
                      layer used once in order, it computes the original model's logits.
                      At initialisation the state is ignored, so every r gives those
                      logits; training the adapter's state half makes iterations count.
`retrofit_from_spec`  the same from a "prelude,core,coda" layer-count string.

The retrofitted model has no state norm (`RecurrentLM(state_norm=False)`): the original
coda reads the residual stream at the scale the earlier layers left it, which a norm
would change.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ponder.errors import PonderInputError, read_json
from ponder.lm.models import GPT, ILR, RNNLM, RecurrentLM

GELU_TANH = ("gelu_new", "gelu_pytorch_tanh")  # Hugging Face's names for GELU's tanh approximation
IGNORED_BUFFERS = (".attn.bias", ".attn.masked_bias")  # the causal mask older GPT-2 files store


def read_gpt2_config(path: Path) -> dict:
    """config.json -> the `GPT` arguments (vocab, context, layers, hidden, heads, ...)."""
    file = path / "config.json"
    if not file.is_file():
        raise PonderInputError(f"{file}: missing; expected a GPT-2 config.json next to model.safetensors")
    config = read_json(file, "expected a GPT-2 config.json")
    if not isinstance(config, dict):
        raise PonderInputError(f"{file}: expected a JSON object of GPT-2 settings, got {type(config).__name__}")

    def positive_int(*names: str) -> int:
        for name in names:
            if name in config:
                value = config[name]
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise PonderInputError(f"{file}: '{name}' is {value!r}, expected a positive integer")
                return value
        raise PonderInputError(f"{file}: missing '{' or '.join(names)}' (a positive integer)")

    hidden, heads, layers = positive_int("n_embd"), positive_int("n_head"), positive_int("n_layer")
    context, vocab = positive_int("n_positions", "n_ctx"), positive_int("vocab_size")
    if hidden % heads:
        raise PonderInputError(f"{file}: n_embd {hidden} is not divisible by n_head {heads}")
    inner = positive_int("n_inner") if config.get("n_inner") is not None else 4 * hidden
    activation = config.get("activation_function", "gelu_new")
    if activation not in GELU_TANH:
        raise PonderInputError(f"{file}: activation_function {activation!r} is not supported; expected {' or '.join(GELU_TANH)} (GELU, tanh approximation)")
    eps = config.get("layer_norm_epsilon", 1e-5)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps <= 0:
        raise PonderInputError(f"{file}: 'layer_norm_epsilon' is {eps!r}, expected a positive number")
    for name, gpt2_default in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False)):
        if config.get(name, gpt2_default) != gpt2_default:
            raise PonderInputError(f"{file}: '{name}' = {config[name]!r} is not supported; expected {str(gpt2_default).lower()}")
    return dict(
        vocab=vocab, context=context, layers=layers, hidden=hidden, heads=heads, expansion=inner / hidden,
        norm_kind="layer", mlp_kind="gelu", bias=True, positions="learned", embed_scale=False,
        norm_eps=float(eps), norm_affine=True,
    )


def gpt2_tensors(layers: int, vocab: int, context: int, hidden: int, inner: int) -> dict[str, tuple[str, tuple[int, ...], bool]]:
    """ponder state-dict name -> (GPT-2 name, GPT-2 shape, stored as Conv1D (in, out), so
    transposed for `nn.Linear`'s (out, in))."""
    D = hidden
    tensors = {"embed.tokens.weight": ("wte.weight", (vocab, D), False), "embed.positions": ("wpe.weight", (context, D), False),
               "norm.weight": ("ln_f.weight", (D,), False), "norm.bias": ("ln_f.bias", (D,), False)}
    parts = {"norm1": ("ln_1", (D,)), "mix.qkv": ("attn.c_attn", (D, 3 * D)), "mix.out": ("attn.c_proj", (D, D)),
             "norm2": ("ln_2", (D,)), "mlp.fc": ("mlp.c_fc", (D, inner)), "mlp.proj": ("mlp.c_proj", (inner, D))}
    for i in range(layers):
        for ours, (theirs, shape) in parts.items():
            tensors[f"blocks.blocks.{i}.{ours}.weight"] = (f"h.{i}.{theirs}.weight", shape, len(shape) == 2)
            tensors[f"blocks.blocks.{i}.{ours}.bias"] = (f"h.{i}.{theirs}.bias", shape[-1:], False)
    return tensors


def load_gpt2_folder(path: str | Path, dtype: torch.dtype = torch.float32) -> GPT:
    """A Hugging Face GPT-2 folder on local disk (config.json, model.safetensors) as a
    ponder `GPT` in `dtype`, computing GPT-2's logits. Reads safetensors only (never a
    pickle). Tensor names may carry a `transformer.` prefix; an `lm_head.weight` equal to
    `wte.weight` is the tied head, a different one becomes a separate head. Bad input
    raises `PonderInputError` naming the file and what was expected."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_dir():
        raise PonderInputError(f"{path}: no such folder; expected a GPT-2 folder with config.json and model.safetensors")
    args = read_gpt2_config(path)
    file = path / "model.safetensors"
    if not file.is_file():
        raise PonderInputError(f"{file}: missing; expected the weights as safetensors (pickle files are not read)")
    try:
        with safe_open(str(file), framework="pt") as f:
            stored = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        reason = " ".join(str(e).split())
        raise PonderInputError(f"{file}: not a readable safetensors file ({reason})") from None
    prefix = "transformer." if any(name.startswith("transformer.") for name in stored) else ""
    head = stored.pop("lm_head.weight", None)

    V, D, layers = args["vocab"], args["hidden"], args["layers"]
    inner = int(round(args["expansion"] * D))
    state = {}
    for ours, (theirs, want, conv1d) in gpt2_tensors(layers, V, args["context"], D, inner).items():
        tensor = stored.pop(prefix + theirs, None)
        if tensor is None:
            raise PonderInputError(f"{file}: missing tensor '{prefix + theirs}' (config.json gives {layers} layers of width {D})")
        if tuple(tensor.shape) != want:
            raise PonderInputError(f"{file}: tensor '{prefix + theirs}' has shape {tuple(tensor.shape)}, expected {want}")
        state[ours] = (tensor.T if conv1d else tensor).to(dtype).contiguous()
    extra = sorted(name for name in stored if not name.endswith(IGNORED_BUFFERS))
    if extra:
        raise PonderInputError(f"{file}: unexpected tensor '{extra[0]}' (config.json gives {layers} layers; is this a GPT-2 model?)")
    tied = head is None or (head.shape == (V, D) and torch.equal(head.to(dtype), state["embed.tokens.weight"]))
    if not tied:
        if tuple(head.shape) != (V, D):
            raise PonderInputError(f"{file}: tensor 'lm_head.weight' has shape {tuple(head.shape)}, expected {(V, D)}")
        state["head.weight"] = head.to(dtype).contiguous()

    vocab, context = args.pop("vocab"), args.pop("context")
    with torch.device("meta"):  # no time or memory spent on a random initialisation
        model = GPT(vocab, context, tie_embeddings=tied, **args)
    model.load_state_dict(state, strict=True, assign=True)
    return model


def retrofit(
    gpt: GPT, prelude: list[int], core: list[int], coda: list[int], *,
    mean_r: int = 4, state_init_std: float = 1.0, backprop_depth: int | None = 4,
) -> RecurrentLM:
    """A `RecurrentLM` built from the layers of a trained `gpt`: its prelude, core and coda
    are copies of the blocks at the given indices (a layer may be used in several parts or
    left out), and it copies the embedding, final norm and head. The adapter starts as
    [0 | I] (adapter([s, e]) = e; it has no bias), so the first iteration ignores the
    initial state, and there is no state norm: with r = 1 and prelude + core + coda every
    layer once in order, the logits are the original model's. `mean_r`, `state_init_std`,
    `backprop_depth`: see `RecurrentLM`. The result has `gpt`'s dtype and device."""
    if not isinstance(gpt, GPT) or isinstance(gpt, RNNLM):  # an RNNLM is GPT's trunk with RNN blocks, which a recurrent-lm core does not take
        raise PonderInputError(f"retrofit needs a GPT, got {type(gpt).__name__}")
    if isinstance(gpt, ILR) and any(n != 1 for n in gpt.repeats):
        raise PonderInputError(f"retrofit needs each layer applied once; this ILR repeats them {gpt.repeats}")
    layers = len(gpt.blocks.blocks)
    parts = {"prelude": list(prelude), "core": list(core), "coda": list(coda)}
    for part, indices in parts.items():
        bad = [i for i in indices if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < layers]
        if bad:
            raise PonderInputError(f"retrofit {part}: layer {bad[0]!r} is not one of the model's layers 0..{layers - 1}")
    if not parts["core"]:
        raise PonderInputError("retrofit core: expected at least one layer")

    reference = next(gpt.parameters())
    with torch.random.fork_rng(devices=[]):  # the throwaway initialisation leaves the global RNG alone
        model = RecurrentLM(
            gpt.vocab, gpt.context, len(parts["prelude"]), len(parts["core"]), len(parts["coda"]), mean_r=mean_r,
            state_init_std=state_init_std, backprop_depth=backprop_depth, state_norm=False, **gpt.common_args,
        )
    model.to(device=reference.device, dtype=reference.dtype)
    with torch.no_grad():
        model.embed.load_state_dict(gpt.embed.state_dict())
        model.norm.load_state_dict(gpt.norm.state_dict())
        if gpt.head is not None:
            model.head.load_state_dict(gpt.head.state_dict())
        for part, indices in parts.items():
            for j, i in enumerate(indices):
                getattr(model, part).blocks[j].load_state_dict(gpt.blocks.blocks[i].state_dict())
        D = model.hidden
        model.adapter.weight.zero_()
        model.adapter.weight[:, D:] = torch.eye(D)  # (D, 2D) = [0 | I]: the state is ignored, e passes through
    model.train(gpt.training)
    return model


def parse_split(split: str, layers: int) -> tuple[int, int, int]:
    """"p,c,d" -> (p, c, d): non-negative counts, core at least one, summing to `layers`."""
    expected = f"expected three layer counts 'prelude,core,coda' (core >= 1) summing to the model's {layers} layers"
    try:
        counts = tuple(int(part) for part in str(split).split(","))
    except ValueError:
        raise PonderInputError(f"retrofit split {split!r}: {expected}") from None
    if len(counts) != 3 or min(counts) < 0 or counts[1] < 1 or sum(counts) != layers:
        raise PonderInputError(f"retrofit split {split!r}: {expected}")
    return counts


def retrofit_from_spec(source: GPT, split: str, **options) -> RecurrentLM:
    """`retrofit` with consecutive layers: split "2,2,2" takes layers 0-1 as the prelude,
    2-3 as the core and 4-5 as the coda. `options`: `retrofit`'s keyword arguments."""
    if not isinstance(source, GPT):
        raise PonderInputError(f"retrofit needs a GPT, got {type(source).__name__}")
    p, c, d = parse_split(split, len(source.blocks.blocks))
    order = list(range(p + c + d))
    return retrofit(source, order[:p], order[p : p + c], order[p + c :], **options)


__all__ = ["load_gpt2_folder", "retrofit", "retrofit_from_spec"]
