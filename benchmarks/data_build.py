"""Build time and size of every dataset with its default settings.

    python benchmarks/data_build.py                     # all of them, into a temporary folder
    python benchmarks/data_build.py --names maze-hard khop --keep data/

Each dataset is built by `ponder data build NAME --out DIR` (the same function), one at
a time; the table gives the examples per split, the size of `data.safetensors` and the
wall time of the build (reading, generating, solving, augmenting and writing).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def main() -> None:
    from ponder import api
    from ponder.tasks.builders import BUILDERS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", nargs="+", default=list(BUILDERS), choices=list(BUILDERS))
    parser.add_argument("--keep", type=Path, help="write the datasets under this folder and keep them")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch)
        rows = []
        for name in args.names:
            result = api.data_build(name, out=str(root / name), progress=False)
            rows.append({"name": name, "counts": result["counts"], "mib": round(result["bytes"] / 2**20, 1), "seconds": result["seconds"]})
            print(json.dumps(rows[-1]) if args.json else f"{name}: {result['counts']}  {rows[-1]['mib']} MiB  {result['seconds']} s", flush=True)
    if not args.json:
        print("\n| dataset | train | val | test | size | build time |\n|---|---|---|---|---|---|")
        for r in rows:
            c = r["counts"]
            print(f"| `{r['name']}` | " + " | ".join(f"{c[s]:,}" if s in c else "-" for s in ("train", "val", "test")) + f" | {r['mib']} MiB | {r['seconds']:.1f} s |")


if __name__ == "__main__":
    main()
