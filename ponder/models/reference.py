"""The public HRM and TRM code's models in ponder's terms: the architecture settings that
compute the same function, and a state-dict converter.

With the settings of `reference_model_config` and the weights of `from_reference`, a
ponder TRM or HRM computes what the reference model computes (tests/test_reference.py
checks logits, halting values and gradients against fixtures the reference code made;
`benchmarks/reference_parity.py` makes them and compares the two side by side). What
the conversion bridges, and why ponder differs there:

- Vocabulary: the reference puts a PAD token at 0 and shifts every other token up by
  one. Fixed-length tasks never use it, so ponder has no PAD: its embedding row and
  answer-head row are dropped (and the PAD logit no longer enters the softmax).
- Rotary embedding: the reference rotates dimension i with i + Dh/2 ("rotate half"),
  ponder rotates 2i with 2i + 1. The two are the same up to a permutation of each head's
  query and key dimensions, which attention scores do not see; the converter permutes
  the query and key rows of `qkv`.
- Halting head: the reference's Q head has (halt, continue) outputs; TRM's rule (its
  default `no_ACT_continue`) reads only the first, which is ponder's `bce` head.
- The prefix's first position holds the reference's puzzle embedding: with one
  identifier (its Sudoku data) it is ponder's shared prefix vector, with several it is
  ponder's puzzle table.
"""

from __future__ import annotations

import torch

from ponder.config import ModelConfig

KINDS = ("trm", "hrm")


def reference_arch(cfg: ModelConfig, vocab: int, seq_len: int, batch_size: int, num_puzzles: int = 1) -> dict:
    """The reference model's config dict (its `arch` section) for the ponder model of
    `cfg`, float32 forward; `vocab` and `seq_len` are ponder's (the reference adds PAD)."""
    positions = cfg.positions if cfg.positions != "auto" else ("rope" if cfg.mixer == "attention" else "learned")
    arch = {
        "batch_size": batch_size, "seq_len": seq_len, "vocab_size": vocab + 1, "num_puzzle_identifiers": num_puzzles,
        "puzzle_emb_ndim": cfg.hidden if cfg.puzzle_prefix else 0,
        "H_cycles": cfg.cycles, "L_cycles": cfg.latent_steps, "hidden_size": cfg.hidden, "expansion": cfg.expansion,
        "num_heads": cfg.heads, "pos_encodings": positions, "halt_max_steps": 16, "halt_exploration_prob": 0.1,
        "forward_dtype": "float32",
    }
    if cfg.family == "trm":
        arch.update(H_layers=0, L_layers=cfg.layers, mlp_t=cfg.mixer == "mlp", puzzle_emb_len=cfg.puzzle_prefix,
                    no_ACT_continue=cfg.halting != "act_q")
    elif cfg.family == "hrm":
        if cfg.puzzle_prefix not in (0, 1):
            raise ValueError(f"the HRM code puts its puzzle vector in one prefix position; got puzzle_prefix={cfg.puzzle_prefix}")
        arch.update(H_layers=cfg.layers, L_layers=cfg.layers)
    else:
        raise ValueError(f"no reference model for family {cfg.family!r}; expected one of {', '.join(KINDS)}")
    return arch


def rotate_half_order(head_dim: int) -> torch.Tensor:
    """(Dh,) the reference dimension each of ponder's dimensions takes: ponder's pair
    (2i, 2i + 1) is the reference's (i, i + Dh/2)."""
    half = head_dim // 2
    return torch.stack([torch.arange(half), torch.arange(half) + half], dim=1).reshape(-1)


def _qkv(weight: torch.Tensor, heads: int, rope: bool) -> torch.Tensor:
    """The reference's (3 D, D) qkv weight (query heads, key heads, value heads) in
    ponder's layout: the same, with each query and key head's rows permuted for RoPE."""
    if not rope:
        return weight
    three_d, dim = weight.shape
    head_dim = three_d // (3 * heads)
    rows = weight.reshape(3, heads, head_dim, dim).clone()
    order = rotate_half_order(head_dim)
    rows[:2] = rows[:2, :, order]
    return rows.reshape(three_d, dim)


def from_reference(state_dict: dict[str, torch.Tensor], cfg: ModelConfig, shared_prefix: bool = True) -> dict[str, torch.Tensor]:
    """A reference HRM/TRM state dict (its model's, with or without the `inner.` and
    `model.` prefixes of its wrappers; parameters and buffers) as a ponder state dict for
    the model of `cfg`. Also maps gradients: every step is a re-indexing.
    `shared_prefix`: the reference's puzzle table has a single identifier, which is
    ponder's shared prefix vector (else its rows are ponder's puzzle table)."""
    ref = {k.removeprefix("model.").removeprefix("inner."): v for k, v in state_dict.items()}
    rope = (cfg.positions if cfg.positions != "auto" else ("rope" if cfg.mixer == "attention" else "learned")) == "rope"
    out: dict[str, torch.Tensor] = {
        "embed.tokens.weight": ref["embed_tokens.embedding_weight"][1:],  # PAD dropped
        "head.weight": ref["lm_head.weight"][1:],
    }
    q_w, q_b = ref["q_head.weight"], ref["q_head.bias"]
    rows = 2 if cfg.halting == "act_q" else 1  # bce / none read the halt output only
    out["halt_head.weight"], out["halt_head.bias"] = q_w[:rows], q_b[:rows]
    if "H_init" in ref:
        out["latent_init"] = torch.stack([ref["H_init"], ref["L_init"]])  # ponder's state is (y, z) = (z_H, z_L)
    if "embed_pos.embedding_weight" in ref:
        out["embed.positions"] = ref["embed_pos.embedding_weight"]
    table = ref.get("puzzle_emb.weights")
    if table is not None:
        if shared_prefix:
            out["embed.shared"] = table[0]
        else:
            out["embed.puzzles.weight"] = table
    nets = {"L_level": "net", "H_level": "answer_net"}
    names = {
        "self_attn.o_proj.weight": "mix.out.weight",
        "mlp_t.gate_up_proj.weight": "mix.mlp.gate_up.weight", "mlp_t.down_proj.weight": "mix.mlp.down.weight",
        "mlp.gate_up_proj.weight": "mlp.gate_up.weight", "mlp.down_proj.weight": "mlp.down.weight",
    }
    for key, value in ref.items():
        level, _, rest = key.partition(".layers.")
        if level not in nets or not rest:
            continue
        index, _, name = rest.partition(".")
        target = f"{nets[level]}.blocks.{index}."
        if name == "self_attn.qkv_proj.weight":
            out[target + "mix.qkv.weight"] = _qkv(value, cfg.heads, rope)
        elif name in names:
            out[target + names[name]] = value
        else:
            raise KeyError(f"reference weight {key!r}: no ponder counterpart")
    return out


def component_counts(state_dict: dict[str, torch.Tensor]) -> dict[str, int]:
    """Parameters by component (embeddings, each network, heads, the rest) of a ponder
    state dict, for comparing with the reference's."""
    counts: dict[str, int] = {}
    for key, value in state_dict.items():
        if key == "latent_init":
            part = "initial states"
        elif key.startswith("embed."):
            part = "embeddings"
        elif key.startswith(("net.", "answer_net.")):
            part = key.split(".")[0]
        elif key.startswith(("head.", "halt_head.")):
            part = "heads"
        else:
            part = "other"
        counts[part] = counts.get(part, 0) + value.numel()
    return counts
