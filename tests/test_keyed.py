import pytest
import torch

from ponder.tasks import keyed

KEYS = torch.arange(4096) * 7919 + 12345  # fixed keys: every test here is deterministic
EXTREME = [0, 1, 2**31 - 2, 2**31 - 1, 2**31, 2**32, 2**62 - 1, 2**62, 2**63 - 1]


def chi_square(values: torch.Tensor, bins: int) -> float:
    counts = torch.bincount(values.reshape(-1), minlength=bins).double()
    expected = values.numel() / bins
    return float(((counts - expected) ** 2 / expected).sum())


def test_mix_is_deterministic_in_range_and_keeps_the_shape():
    keys = KEYS.reshape(64, 64)
    a = keyed.mix(keys, 3)
    assert a.shape == (64, 64) and a.dtype == torch.int64
    assert torch.equal(a, keyed.mix(keys.clone(), 3))
    assert a.min() >= 0 and a.max() < 2**31 - 1
    assert torch.equal(keyed.mix(keys.int(), 3), a)  # narrower integer keys read as int64


def test_mix_never_overflows_on_extreme_keys():
    # The helpers also run on Python's unbounded integers: if any int64 product had
    # wrapped, the tensor result would differ from the exact one.
    keys = torch.tensor(EXTREME)
    for salt in (0, 1, 2**64 - 1, -5, 10**30):
        got = keyed.mix(keys, salt).tolist()
        exact = [keyed._finish(keyed._state(k, salt)) for k in EXTREME]
        assert got == exact and all(0 <= v < 2**31 - 1 for v in got)
    assert len(set(keyed.mix(keys, 0).tolist())) == len(EXTREME)


def test_draws_do_not_depend_on_the_rest_of_the_batch():
    keys = KEYS[:300]
    order = torch.randperm(300, generator=torch.Generator().manual_seed(0))
    for fn in (lambda k: keyed.uniform(k, 5, 2), lambda k: keyed.permutations(k, 9, 4), lambda k: keyed.integers(k, 8, 6)):
        whole = fn(keys)
        assert torch.equal(fn(keys[order]), whole[order])
        assert torch.equal(fn(keys[17:18]), whole[17:18])
        mixed = torch.cat([keys[:10], torch.tensor([5, 2**62])])
        assert torch.equal(fn(mixed)[:10], whole[:10])


def test_mix_is_roughly_uniform():
    # 64 bins of 4096 keys: the statistic has mean 63 and standard deviation about 11.
    assert chi_square(keyed.mix(KEYS, 0) >> 25, 64) < 150
    # consecutive keys must not give related values: pairs of them in 16 x 16 cells
    pairs = keyed.mix(torch.arange(8192), 1) >> 27
    assert chi_square(pairs[0::2] * 16 + pairs[1::2], 256) < 400


def test_uniform_range_and_spread():
    u = keyed.uniform(KEYS, 6, 9)
    assert u.shape == (4096, 6) and u.dtype == torch.float32
    assert u.min() >= 0 and u.max() < 1
    assert chi_square((u * 32).long(), 32) < 90
    assert abs(float(torch.corrcoef(u.T)[0, 1])) < 0.05  # the draws of one key are not correlated
    assert torch.equal(keyed.uniform(KEYS[:8], 6, 9)[:, :3], keyed.uniform(KEYS[:8], 3, 9))


def test_integers_range_and_spread():
    x = keyed.integers(KEYS, 8, 1)
    assert x.dtype == torch.int64 and x.min() == 0 and x.max() == 7
    assert chi_square(x, 8) < 40
    assert (keyed.integers(KEYS, 1, 1) == 0).all()
    assert keyed.integers(torch.tensor(EXTREME), 2**31, 0).lt(2**31).all()
    with pytest.raises(ValueError, match="high"):
        keyed.integers(KEYS, 0, 1)


def test_permutations_are_permutations_and_uniform_by_position():
    p = keyed.permutations(KEYS, 9, 5)
    assert p.shape == (4096, 9) and p.dtype == torch.int64
    assert torch.equal(p.sort(dim=1).values, torch.arange(9).expand(4096, 9))
    for position in range(9):
        assert chi_square(p[:, position], 9) < 50
    assert len({tuple(row) for row in p.tolist()}) > 4000  # 9! = 362,880 orders: few repeats
    assert torch.equal(keyed.permutations(KEYS[:3], 1, 5), torch.zeros(3, 1, dtype=torch.long))


def test_salts_and_keys_give_different_streams():
    a, b = keyed.uniform(KEYS, 4, 0), keyed.uniform(KEYS, 4, 1)
    assert (a != b).float().mean() > 0.99
    assert torch.equal(keyed.mix(KEYS, 0), keyed.mix(KEYS, 2**64))  # salts are read modulo 2**64
    assert len(set(keyed.mix(KEYS, 0).tolist())) > 4090
    perms = {tuple(keyed.permutations(KEYS[:1], 9, salt)[0].tolist()) for salt in range(50)}
    assert len(perms) > 45


def test_example_keys_are_distinct_non_negative_and_seeded():
    positions = torch.arange(100_000)
    k0 = keyed.example_keys(0, positions)
    assert k0.dtype == torch.int64 and k0.min() >= 0 and k0.max() < 2**62
    assert k0.unique().numel() == 100_000
    assert torch.equal(keyed.example_keys(0, positions[5:9]), k0[5:9])
    assert not torch.equal(keyed.example_keys(1, positions[:10]), k0[:10])
    big = keyed.example_keys(3, torch.tensor([2**62 - 1, 0]))
    assert big.min() >= 0 and big.max() < 2**62


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_draws_equal_cpu_draws():
    keys = torch.cat([KEYS, torch.tensor(EXTREME)])
    for fn in (lambda k: keyed.mix(k, 3), lambda k: keyed.uniform(k, 7, 1), lambda k: keyed.permutations(k, 9, 2), lambda k: keyed.integers(k, 8, 4)):
        assert torch.equal(fn(keys.cuda()).cpu(), fn(keys))
