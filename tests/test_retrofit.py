"""GPT-2-format models and retrofitted recurrence (ponder.lm.retrofit), against a slow,
written-out GPT-2 forward on tiny random GPT-2 folders the tests write themselves."""

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from ponder.errors import PonderInputError
from ponder.lm.models import GPT, ILR, KVCache, RecurrentLM, build_lm
from ponder.lm.retrofit import load_gpt2_folder, retrofit, retrofit_from_spec
from ponder.nn.blocks import Block, GeluMLP

V, CONTEXT, D, HEADS, LAYERS, INNER = 11, 12, 16, 2, 4, 40
GPT2_OPTIONS = dict(norm_kind="layer", mlp_kind="gelu", bias=True, positions="learned", embed_scale=False)


def gpt2_config(**overrides) -> dict:
    config = dict(model_type="gpt2", n_embd=D, n_head=HEADS, n_layer=LAYERS, n_positions=CONTEXT, vocab_size=V,
                  n_inner=INNER, layer_norm_epsilon=1e-5, activation_function="gelu_new")
    config.update(overrides)
    return config


def gpt2_tensors(seed: int = 0, layers: int = LAYERS) -> dict[str, torch.Tensor]:
    """Random float64 tensors with GPT-2's names and (Conv1D: (in, out)) shapes; norms and
    biases random too, so every one of them matters."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, mean=0.0, std=0.3):
        return mean + std * torch.randn(*shape, generator=g, dtype=torch.float64)

    t = {"wte.weight": rand(V, D), "wpe.weight": rand(CONTEXT, D), "ln_f.weight": rand(D, mean=1.0), "ln_f.bias": rand(D)}
    for i in range(layers):
        t.update({
            f"h.{i}.ln_1.weight": rand(D, mean=1.0), f"h.{i}.ln_1.bias": rand(D),
            f"h.{i}.attn.c_attn.weight": rand(D, 3 * D), f"h.{i}.attn.c_attn.bias": rand(3 * D),
            f"h.{i}.attn.c_proj.weight": rand(D, D), f"h.{i}.attn.c_proj.bias": rand(D),
            f"h.{i}.ln_2.weight": rand(D, mean=1.0), f"h.{i}.ln_2.bias": rand(D),
            f"h.{i}.mlp.c_fc.weight": rand(D, INNER), f"h.{i}.mlp.c_fc.bias": rand(INNER),
            f"h.{i}.mlp.c_proj.weight": rand(INNER, D), f"h.{i}.mlp.c_proj.bias": rand(D),
        })
    return t


def write_folder(path, config=None, tensors=None):
    """A GPT-2 folder as Hugging Face writes one: config.json and model.safetensors."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(gpt2_config() if config is None else config))
    save_file(gpt2_tensors() if tensors is None else tensors, str(path / "model.safetensors"))
    return path


# ---- the reference: GPT-2's forward pass written out over the state dict -------------------

def reference_gpt2_logits(t: dict[str, torch.Tensor], config: dict, idx: torch.Tensor) -> torch.Tensor:
    """GPT-2's logits (B, T, V) for idx (B, T), in plain torch ops, one step at a time."""
    eps, H = config["layer_norm_epsilon"], config["n_head"]

    def layer_norm(x, name):
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + eps) * t[name + ".weight"] + t[name + ".bias"]

    def conv1d(x, name):  # GPT-2's Conv1D: x @ W + b with W stored (in, out)
        return x @ t[name + ".weight"] + t[name + ".bias"]

    def gelu_tanh(x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))

    B, T = idx.shape
    h = t["wte.weight"][idx] + t["wpe.weight"][:T]  # (B, T, D)
    Dm = h.shape[-1]
    for i in range(config["n_layer"]):
        q, k, v = conv1d(layer_norm(h, f"h.{i}.ln_1"), f"h.{i}.attn.c_attn").split(Dm, dim=-1)
        q, k, v = (x.reshape(B, T, H, Dm // H).transpose(1, 2) for x in (q, k, v))  # (B, H, T, Dh)
        scores = q @ k.transpose(-1, -2) / math.sqrt(Dm // H)
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, Dm)
        h = h + conv1d(y, f"h.{i}.attn.c_proj")
        h = h + conv1d(gelu_tanh(conv1d(layer_norm(h, f"h.{i}.ln_2"), f"h.{i}.mlp.c_fc")), f"h.{i}.mlp.c_proj")
    return layer_norm(h, "ln_f") @ t["wte.weight"].T


def tokens(seed: int = 1, B: int = 2, T: int = CONTEXT) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


# ---- GPT-2 format ---------------------------------------------------------------------------

def test_gpt2_folder_matches_written_out_reference(tmp_path):
    folder = write_folder(tmp_path / "gpt2")
    model = load_gpt2_folder(folder, dtype=torch.float64).eval()
    assert isinstance(model, GPT) and model.head is None  # tied head
    assert all(p.dtype == torch.float64 and p.device.type == "cpu" and p.requires_grad for p in model.parameters())
    idx = tokens()
    want = reference_gpt2_logits(gpt2_tensors(), gpt2_config(), idx)
    assert torch.allclose(model(idx).logits, want, atol=1e-10, rtol=0)
    short = idx[:, :5]  # positions from 0, fewer than the context
    assert torch.allclose(model(short).logits, reference_gpt2_logits(gpt2_tensors(), gpt2_config(), short), atol=1e-10, rtol=0)


def test_gpt2_folder_with_prefix_lm_head_and_mask_buffers(tmp_path):
    """GPT2LMHeadModel's names: a `transformer.` prefix, lm_head tied to wte, old mask buffers."""
    plain = gpt2_tensors()
    tensors = {"transformer." + k: v for k, v in plain.items()}
    tensors["lm_head.weight"] = plain["wte.weight"].clone()
    tensors["transformer.h.0.attn.bias"] = torch.ones(1, 1, CONTEXT, CONTEXT).tril()
    model = load_gpt2_folder(write_folder(tmp_path / "lmhead", tensors=tensors), dtype=torch.float64)
    assert model.head is None
    idx = tokens(2)
    assert torch.allclose(model(idx).logits, reference_gpt2_logits(plain, gpt2_config(), idx), atol=1e-10, rtol=0)


def test_gpt2_folder_default_inner_width_and_float32(tmp_path):
    config = gpt2_config(n_inner=None, n_ctx=CONTEXT)
    del config["n_positions"]
    tensors = gpt2_tensors()
    for i in range(LAYERS):  # n_inner None: 4 * n_embd
        tensors[f"h.{i}.mlp.c_fc.weight"] = torch.randn(D, 4 * D, dtype=torch.float64)
        tensors[f"h.{i}.mlp.c_fc.bias"] = torch.randn(4 * D, dtype=torch.float64)
        tensors[f"h.{i}.mlp.c_proj.weight"] = torch.randn(4 * D, D, dtype=torch.float64) / 8
    model = load_gpt2_folder(write_folder(tmp_path / "wide", config, tensors))
    assert next(model.parameters()).dtype == torch.float32
    idx = tokens(3)
    want = reference_gpt2_logits(tensors, config, idx)
    assert torch.allclose(model.double()(idx).logits, want, atol=1e-5)  # float32 weights, float64 compute


def test_gpt2_options_cached_generation_equals_recomputation(tmp_path):
    """Learned positions read the cache's offset: step-by-step logits equal the full pass."""
    model = load_gpt2_folder(write_folder(tmp_path / "gpt2"), dtype=torch.float64).eval()
    idx = tokens(4, T=9)
    full = model(idx).logits
    cache, parts = KVCache(), []
    for lo, hi in [(0, 4), (4, 5), (5, 9)]:
        parts.append(model(idx[:, lo:hi], cache=cache).logits)
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-12)


def test_gpt2_options_through_build_lm_and_defaults_unchanged():
    torch.manual_seed(0)
    model = build_lm("gpt", V, CONTEXT, layers=2, hidden=D, heads=HEADS, expansion=2.5, norm_eps=1e-6, **GPT2_OPTIONS)
    block = model.blocks.blocks[0]
    assert isinstance(block.norm1, torch.nn.LayerNorm) and block.norm1.bias is not None and block.norm1.eps == 1e-6
    assert isinstance(block.mlp, GeluMLP) and block.mlp.fc.out_features == 40 and block.mlp.fc.bias is not None
    assert block.mix.qkv.bias is not None and block.mix.rotary is None
    assert model.embed.positions.shape == (CONTEXT, D) and model.embed.scale == 1.0
    assert model(tokens()).logits.shape == (2, CONTEXT, V)
    default = GPT(V, CONTEXT, layers=1, hidden=D, heads=HEADS)
    names = set(dict(default.named_parameters()))
    assert names == {"embed.tokens.weight", "norm.weight", "blocks.blocks.0.mix.qkv.weight", "blocks.blocks.0.mix.out.weight",
                     "blocks.blocks.0.mlp.gate_up.weight", "blocks.blocks.0.mlp.down.weight",
                     "blocks.blocks.0.norm1.weight", "blocks.blocks.0.norm2.weight"}
    assert default.embed.scale == math.sqrt(D) and default.blocks.blocks[0].mix.rotary is not None
    with pytest.raises(ValueError, match="positions"):
        GPT(V, CONTEXT, positions="sinusoidal")
    with pytest.raises(ValueError, match="norm_kind"):
        Block(D, HEADS, 2.0, "attention", 5, None, norm_kind="batch")
    with pytest.raises(ValueError, match="mlp_kind"):
        Block(D, HEADS, 2.0, "attention", 5, None, mlp_kind="relu")


# ---- retrofitting -----------------------------------------------------------------------------

def ponder_gpt(seed: int = 0, layers: int = LAYERS, **options) -> GPT:
    torch.manual_seed(seed)
    model = GPT(V, CONTEXT, layers=layers, hidden=D, heads=HEADS, expansion=2.0, **options).double().eval()
    with torch.no_grad():  # non-trivial norm weights (and biases), so copying them is tested
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("source", ["ponder", "ponder-untied", "gpt2"])
def test_retrofit_at_r1_reproduces_the_original_logits(tmp_path, source):
    if source == "gpt2":
        gpt = load_gpt2_folder(write_folder(tmp_path / "gpt2"), dtype=torch.float64).eval()
    else:
        gpt = ponder_gpt(tie_embeddings=source != "ponder-untied")
    idx = tokens(5)
    want = gpt(idx).logits
    for prelude, core, coda in [([0], [1, 2], [3]), ([], [0, 1, 2, 3], []), ([0, 1, 2], [3], [])]:
        model = retrofit(gpt, prelude, core, coda)
        assert isinstance(model, RecurrentLM) and isinstance(model.state_norm, torch.nn.Identity)
        assert next(model.parameters()).dtype == torch.float64 and not model.training
        got = model(idx, r=1).logits
        assert torch.allclose(got, want, atol=1e-10, rtol=0), (prelude, core, coda)
        with torch.no_grad():  # the initial state does not matter at initialisation
            assert torch.allclose(model(idx, r=1, generator=torch.Generator().manual_seed(0)).logits, want, atol=1e-10, rtol=0)
    # At initialisation the adapter ignores the state, so every r gives the same logits; once
    # its state half is non-zero (as after training), r = 1 from the zero state is still
    # the original model and more iterations change the output.
    model = retrofit(gpt, [0], [1, 2], [3])
    assert torch.allclose(model(idx, r=3).logits, want, atol=1e-10, rtol=0)
    with torch.no_grad():
        model.adapter.weight[:, :D] = 0.1 * torch.randn(D, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.allclose(model(idx, r=1).logits, want, atol=1e-10, rtol=0)
    deeper = model(idx, r=3).logits
    assert torch.isfinite(deeper).all() and not torch.allclose(deeper, want, atol=1e-3)


def test_retrofit_copies_and_trains_independently():
    gpt = ponder_gpt()
    before = {k: v.clone() for k, v in gpt.state_dict().items()}
    model = retrofit_from_spec(gpt, "1,2,1", mean_r=2, backprop_depth=None)
    model.train()
    assert model.mean_r == 2 and model.backprop_depth is None
    model(tokens(), r=2).logits.sum().backward()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert all(torch.equal(v, gpt.state_dict()[k]) for k, v in before.items())  # the source is untouched
    assert model.adapter.weight.grad[:, :D].abs().sum() > 0  # at r = 2 the state's half is trained
    cache, idx = KVCache(), tokens(6, T=8)  # generation with a cache still equals recomputation
    model.eval()
    full = model(idx, r=3).logits
    parts = [model(idx[:, :5], r=3, cache=cache).logits, model(idx[:, 5:], r=3, cache=cache).logits]
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-11)


def test_retrofit_from_spec_matches_explicit_layers():
    gpt = ponder_gpt()
    idx = tokens(7)
    a, b = retrofit_from_spec(gpt, "2,1,1"), retrofit(gpt, [0, 1], [2], [3])
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert torch.allclose(a(idx, r=1).logits, gpt(idx).logits, atol=1e-10, rtol=0)


def test_recurrent_lm_state_norm_option_through_build_lm():
    plain = build_lm("recurrent-lm", V, CONTEXT, hidden=D, heads=HEADS, state_norm=False)
    assert isinstance(plain.state_norm, torch.nn.Identity)
    assert not isinstance(RecurrentLM(V, CONTEXT, hidden=D, heads=HEADS).state_norm, torch.nn.Identity)  # default kept


@pytest.mark.parametrize("split", ["2,2", "2,2,2", "1,0,3", "a,b,c", "-1,4,1", "", "1,2,1,0"])
def test_retrofit_from_spec_rejects_bad_splits(split):
    with pytest.raises(PonderInputError, match="prelude,core,coda") as info:
        retrofit_from_spec(ponder_gpt(), split)
    assert "\n" not in str(info.value) and repr(split) in str(info.value)


def test_retrofit_rejects_bad_layers_and_models():
    gpt = ponder_gpt()
    with pytest.raises(PonderInputError, match="layer 4 is not one of the model's layers 0..3"):
        retrofit(gpt, [0], [4], [])
    with pytest.raises(PonderInputError, match="core: expected at least one layer"):
        retrofit(gpt, [0, 1], [], [2, 3])
    with pytest.raises(PonderInputError, match="repeats"):
        retrofit(ILR(V, CONTEXT, layers=2, repeats=[2, 1], hidden=D, heads=HEADS), [0], [1], [])
    with pytest.raises(PonderInputError, match="needs a GPT"):
        retrofit_from_spec(RecurrentLM(V, CONTEXT, hidden=D, heads=HEADS), "1,1,1")


# ---- bad GPT-2 folders: one line naming the file and what was expected ----------------------

def drop(name):
    tensors = gpt2_tensors()
    del tensors[name]
    return tensors


def reshape(name, shape):
    tensors = gpt2_tensors()
    tensors[name] = torch.zeros(shape, dtype=torch.float64)
    return tensors


BAD_FOLDERS = {
    "missing config": (lambda p: (p.mkdir(), save_file(gpt2_tensors(), str(p / "model.safetensors"))), "config.json: missing"),
    "bad json": (lambda p: (write_folder(p), (p / "config.json").write_text("{\"n_embd\": 16,")), "config.json: not valid JSON"),
    "json list": (lambda p: (write_folder(p), (p / "config.json").write_text("[1, 2]")), "config.json: expected a JSON object"),
    "missing key": (lambda p: write_folder(p, config={k: v for k, v in gpt2_config().items() if k != "n_head"}), "config.json: missing 'n_head'"),
    "bad value": (lambda p: write_folder(p, config=gpt2_config(n_layer="four")), "config.json: 'n_layer' is 'four', expected a positive integer"),
    "activation": (lambda p: write_folder(p, config=gpt2_config(activation_function="relu")), "config.json: activation_function 'relu' is not supported; expected gelu_new"),
    "indivisible": (lambda p: write_folder(p, config=gpt2_config(n_head=3)), "config.json: n_embd 16 is not divisible by n_head 3"),
    "missing weights": (lambda p: (p.mkdir(), (p / "config.json").write_text(json.dumps(gpt2_config()))), "model.safetensors: missing; expected the weights as safetensors"),
    "corrupt weights": (lambda p: (write_folder(p), (p / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")), "model.safetensors: not a readable safetensors file"),
    "missing tensor": (lambda p: write_folder(p, tensors=drop("h.2.mlp.c_fc.bias")), "model.safetensors: missing tensor 'h.2.mlp.c_fc.bias'"),
    "wrong shape": (lambda p: write_folder(p, tensors=reshape("h.1.attn.c_attn.weight", (3 * D, D))), r"model.safetensors: tensor 'h.1.attn.c_attn.weight' has shape \(48, 16\), expected \(16, 48\)"),
    "wrong vocab": (lambda p: write_folder(p, tensors=reshape("wte.weight", (V + 1, D))), r"tensor 'wte.weight' has shape \(12, 16\), expected \(11, 16\)"),
    "more layers": (lambda p: write_folder(p, tensors=gpt2_tensors(layers=LAYERS + 1)), "unexpected tensor 'h.4.attn.c_attn.bias'"),
}


@pytest.mark.parametrize("case", list(BAD_FOLDERS))
def test_bad_gpt2_folders_raise_one_line_errors(tmp_path, case):
    make, message = BAD_FOLDERS[case]
    folder = tmp_path / "model"
    make(folder)
    with pytest.raises(PonderInputError, match=message) as info:
        load_gpt2_folder(folder)
    assert "\n" not in str(info.value) and str(folder) in str(info.value)


def test_missing_folder(tmp_path):
    with pytest.raises(PonderInputError, match="no such folder; expected a GPT-2 folder") as info:
        load_gpt2_folder(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value)
