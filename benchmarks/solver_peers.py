"""ponder's solvers side by side with public peers, in one process, timings interleaved.

    python benchmarks/solver_peers.py fixed-point --threads 1 --out records/solvers-peers-cpu/fixed_point.json
    python benchmarks/solver_peers.py newton --threads 1 --out records/solvers-peers-cpu/newton.json  (newton*.json)
    python benchmarks/solver_peers.py report records/solvers-peers-cpu

Peers are optional: each runs when it imports, and is reported missing otherwise.

fixed-point  z = tanh(W z + U x + b), W symmetric with spectral radius 0.9 or 0.99, on
             (64, 256) and (32, 81, 128) states, against torchdeq's solvers
             (`pip install torchdeq`): function calls to reach the same per-sample
             relative residual, forward time, and forward + implicit backward time (the
             adjoint solved with the same method and tolerance).
newton       the torch.nn.GRU-layout cell over T steps (batch 1), ponder's DEER (eager
             and compiled) against the DEER reference in JAX (machine-discovery/deer,
             installed from its repository) and against sequential loops: the
             reference's own jax.lax.scan loop, a torch.compile'd loop (torch's scan
             operator) and torch.nn.GRU. JAX is pinned to the torch thread count.

Each contender runs once per round, rounds alternate the contenders, and the median of
the rounds is reported, so load from other jobs falls on all of them alike. `report`
writes the Markdown tables from the JSON files.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _peer(name: str) -> Any:
    """The imported module, or None when the peer is not installed."""
    try:
        return __import__(name)
    except ImportError:
        return None


def _interleaved(contenders: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median seconds per contender over `rounds` alternating rounds (after one warm-up each)."""
    for fn in contenders.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


# --------------------------------------------------------------------------- fixed points

FIXED_POINT_CASES = (("64x256", (64, 256), 0.9), ("64x256", (64, 256), 0.99), ("32x81x128", (32, 81, 128), 0.9))
FIXED_POINT_METHODS = {"anderson": "anderson", "broyden": "broyden", "iteration": "fixed_point_iter"}  # ponder -> torchdeq


def _tanh_map(shape: tuple[int, ...], radius: float, seed: int):
    """f(z) = tanh(z W^T + x U^T + b) with symmetric W of spectral radius `radius`; z (shape)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    width = shape[-1]
    q, _ = torch.linalg.qr(torch.randn(width, width, generator=gen))
    eigenvalues = radius * (2 * torch.rand(width, generator=gen) - 1)
    eigenvalues[0] = radius
    w = (q * eigenvalues) @ q.T  # symmetric, spectral radius exactly `radius`
    u = torch.randn(width, width, generator=gen) / width**0.5
    x = torch.randn(shape, generator=gen)
    b = 0.1 * torch.randn(width, generator=gen)
    params = [p.requires_grad_() for p in (w, u, b)]
    return (lambda z: torch.tanh(z @ params[0].T + x @ params[1].T + params[2])), params


def fixed_point(rounds: int, tol: float, max_iter: int, history: int, seed: int) -> list[dict[str, Any]]:
    import torch

    from ponder.solvers import fixed_point as ponder_fixed_point
    from ponder.solvers import solve

    torchdeq = _peer("torchdeq")
    rows = []
    for label, shape, radius in FIXED_POINT_CASES:
        f, params = _tanh_map(shape, radius, seed)
        z0 = torch.zeros(shape)
        for method, theirs in FIXED_POINT_METHODS.items():
            calls = {"ponder": 0, "torchdeq": 0}

            def counted(who: str) -> Callable[[torch.Tensor], torch.Tensor]:
                def g(z: torch.Tensor) -> torch.Tensor:
                    calls[who] += 1
                    return f(z)

                return g

            kwargs = dict(method=method, max_iter=max_iter, tol=tol, history=history)

            def ponder_forward() -> torch.Tensor:
                return solve(counted("ponder"), z0, **kwargs).z

            def ponder_backward() -> None:
                eq = ponder_fixed_point(f, z0, backward="implicit", solver_kwargs=kwargs)
                eq.z.square().mean().backward()

            contenders: dict[str, Callable[[], Any]] = {"ponder forward": ponder_forward, "ponder forward+backward": ponder_backward}
            if torchdeq is not None:
                from torchdeq import get_deq
                from torchdeq.solver import get_solver

                solver = get_solver(theirs)
                extra = {"m": history} if theirs == "anderson" else {"LBFGS_thres": history} if theirs == "broyden" else {}

                def theirs_forward() -> torch.Tensor:
                    with torch.no_grad():
                        return solver(counted("torchdeq"), z0, max_iter=max_iter, tol=tol, stop_mode="rel", **extra)[0]

                deq = get_deq(
                    ift=True, f_solver=theirs, b_solver=theirs, f_max_iter=max_iter, b_max_iter=max_iter, f_tol=tol, b_tol=tol,
                    f_stop_mode="rel", b_stop_mode="rel",
                )

                def theirs_backward() -> None:
                    z_out, _ = deq(f, z0, solver_kwargs=extra)
                    z_out[-1].square().mean().backward()

                contenders.update({"torchdeq forward": theirs_forward, "torchdeq forward+backward": theirs_backward})
            # calls and accuracy from one solve each
            answers = {}
            for who in ("ponder", "torchdeq") if torchdeq is not None else ("ponder",):
                calls[who] = 0
                with torch.no_grad():
                    z = contenders[f"{who} forward"]()
                    fz = f(z)
                answers[who] = {
                    "calls": calls[who],
                    "residual": float(((fz - z).flatten(1).norm(dim=1) / fz.flatten(1).norm(dim=1)).max()),
                    "finite": bool(torch.isfinite(z).all()),
                }
            seconds = _interleaved(contenders, rounds)
            for p in params:
                p.grad = None
            row = {"case": label, "radius": radius, "method": method, "tol": tol, "history": history, "torchdeq": torchdeq is not None}
            for who, answer in answers.items():
                row.update({f"{who}_{k}": v for k, v in answer.items()})
            row.update({f"seconds {name}": s for name, s in seconds.items()})
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


# --------------------------------------------------------------------------- Newton in time

def newton(lengths: list[int], sizes: list[int], dtypes: list[str], rounds: int, seed: int) -> list[dict[str, Any]]:
    import torch

    from ponder.solvers import NewtonResult, make_cell, run_parallel, run_sequential
    from ponder.solvers.bench_time import compiled_sequential, torch_rnn

    jax, deer = _peer("jax"), _peer("deer")
    rows = []
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        if jax is not None:
            jax.config.update("jax_enable_x64", dtype_name == "float64")
        for hidden in sizes:
            for steps in lengths:
                torch.manual_seed(seed)
                cell = make_cell("gru", hidden, hidden).to(dtype)
                x = torch.randn(1, steps, hidden, dtype=dtype)
                with torch.no_grad():
                    u = cell.project(x)  # (1, T, 3H): both libraries get the projected inputs
                    reference = run_sequential(cell, x)
                results: dict[str, Any] = {}
                compiled_loop, nn_gru = compiled_sequential(cell), torch_rnn(cell)
                contenders: dict[str, Callable[[], Any]] = {
                    "ponder deer": lambda: run_parallel(cell, x, method="deer"),
                    "ponder deer compiled": lambda: run_parallel(cell, x, method="deer", compile=True),
                    "torch compiled loop": lambda: compiled_loop(x),
                    "torch.nn.GRU": lambda: nn_gru(x),
                }
                if jax is not None and deer is not None:
                    contenders.update(_jax_contenders(cell, u, jax))
                with torch.no_grad():
                    for name, fn in contenders.items():
                        out = fn()
                        if isinstance(out, NewtonResult):
                            results[f"{name} iterations"] = out.trace.iterations
                            out = out.h
                        results[f"{name} max_abs_err"] = float(abs(torch.as_tensor(_numpy(out)).reshape(reference.shape) - reference).max())
                    seconds = _interleaved(contenders, rounds)
                row = {"cell": "gru", "T": steps, "hidden": hidden, "dtype": dtype_name, "jax": jax is not None and deer is not None}
                row.update(results)
                row.update({f"seconds {name}": s for name, s in seconds.items()})
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def _numpy(out: Any) -> Any:
    import numpy as np
    import torch

    if isinstance(out, torch.Tensor):
        return out.detach().numpy()
    return np.asarray(out)


def _jax_contenders(cell: Any, u: Any, jax: Any) -> dict[str, Callable[[], Any]]:
    """The reference's DEER and its sequential jax.lax.scan on the same GRU weights."""
    import jax.numpy as jnp
    from deer.fseq1d import DEER, Sequential, seq1d

    hidden = cell.hidden_size
    params = (jnp.asarray(cell.weight_hh.detach().numpy()), jnp.asarray(cell.bias_hh.detach().numpy()))
    inputs = jnp.asarray(u[0].numpy())  # (T, 3H)
    y0 = jnp.zeros(hidden, dtype=inputs.dtype)

    def gru(h, u_t, p):  # torch.nn.GRUCell's update, given the projected input u_t = W_ih x_t + b_ih
        w_hh, b_hh = p
        g_r, g_z, g_n = jnp.split(w_hh @ h + b_hh, 3)
        u_r, u_z, u_n = jnp.split(u_t, 3)
        r, z = jax.nn.sigmoid(u_r + g_r), jax.nn.sigmoid(u_z + g_z)
        n = jnp.tanh(u_n + r * g_n)
        return n + z * (h - n)

    deer_solve = jax.jit(lambda inputs, p: seq1d(gru, y0, inputs, p, method=DEER()).value)
    scan_loop = jax.jit(lambda inputs, p: seq1d(gru, y0, inputs, p, method=Sequential()).value)
    return {
        "jax deer (reference)": lambda: deer_solve(inputs, params).block_until_ready(),
        "jax lax.scan loop": lambda: scan_loop(inputs, params).block_until_ready(),
    }


# --------------------------------------------------------------------------- report

def report(folder: Path) -> str:
    lines = []
    fixed = folder / "fixed_point.json"
    if fixed.exists():
        rows = json.loads(fixed.read_text())["rows"]
        lines += [
            "| case | radius | method | calls ponder / torchdeq | max rel. residual ponder / torchdeq | forward ms ponder / torchdeq (ratio) | forward+implicit backward ms ponder / torchdeq (ratio) |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            if not r["torchdeq"]:
                continue
            fwd = r["seconds torchdeq forward"] / r["seconds ponder forward"]
            both = r["seconds torchdeq forward+backward"] / r["seconds ponder forward+backward"]
            lines.append(
                f"| {r['case']} | {r['radius']} | {r['method']} | {r['ponder_calls']} / {r['torchdeq_calls']} | "
                f"{r['ponder_residual']:.1e} / {r['torchdeq_residual']:.1e}{'' if r['torchdeq_finite'] else ' (non-finite)'} | "
                f"{1e3 * r['seconds ponder forward']:.1f} / {1e3 * r['seconds torchdeq forward']:.1f} ({fwd:.2f}x) | "
                f"{1e3 * r['seconds ponder forward+backward']:.1f} / {1e3 * r['seconds torchdeq forward+backward']:.1f} ({both:.2f}x) |"
            )
        lines.append("")
    rows = [row for path in sorted(folder.glob("newton*.json")) for row in json.loads(path.read_text())["rows"]]
    if rows:
        names = ["ponder deer", "ponder deer compiled", "jax deer (reference)", "jax lax.scan loop", "torch compiled loop", "torch.nn.GRU"]
        lines += [
            "| dtype | hidden | T | " + " | ".join(f"{n} ms" for n in names) + " | reference / ponder compiled | torch compiled loop / ponder compiled | ponder iterations |",
            "|---|---|---|" + "---|" * (len(names) + 3),
        ]
        for r in rows:
            ms = " | ".join(f"{1e3 * r[f'seconds {n}']:.1f}" if f"seconds {n}" in r else "—" for n in names)
            best = r["seconds ponder deer compiled"]
            vs_ref = f"{r['seconds jax deer (reference)'] / best:.2f}x" if r["jax"] else "—"
            iters = str(r["ponder deer compiled iterations"])
            lines.append(
                f"| {r['dtype']} | {r['hidden']} | {r['T']} | {ms} | {vs_ref} | {r['seconds torch compiled loop'] / best:.2f}x | {iters} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    fp = sub.add_parser("fixed-point", help="fixed points against torchdeq")
    fp.add_argument("--tol", type=float, default=1e-4)
    fp.add_argument("--max-iter", type=int, default=400)
    fp.add_argument("--history", type=int, default=5)
    nt = sub.add_parser("newton", help="Newton in time against the DEER reference and compiled loops")
    nt.add_argument("--lengths", type=int, nargs="+", default=[1000, 10000, 100000])
    nt.add_argument("--sizes", type=int, nargs="+", default=[4, 16, 64])
    nt.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    for p in (fp, nt):
        p.add_argument("--threads", type=int, default=1, help="torch and JAX threads")
        p.add_argument("--rounds", type=int, default=5)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--out", type=Path, help="write the rows here as JSON")
    rp = sub.add_parser("report", help="Markdown tables from a folder of JSON outputs")
    rp.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    if args.command == "report":
        print(report(args.folder))
        return
    # JAX reads its thread settings when it starts: set them before anything imports it
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if args.threads == 1:
        os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    import torch

    torch.set_num_threads(args.threads)
    started = time.time()
    if args.command == "fixed-point":
        rows = fixed_point(args.rounds, args.tol, args.max_iter, args.history, args.seed)
    else:
        rows = newton(args.lengths, args.sizes, args.dtypes, args.rounds, args.seed)
    result = {"command": " ".join(sys.argv), "threads": args.threads, "torch": torch.__version__, "seconds": time.time() - started, "rows": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    else:
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
