"""The README's commands run (a tiny variant: training gets small settings appended)."""

import re
import shlex
import shutil
import subprocess
import sys

from conftest import ROOT, TINY
from ponder.cli import main


def readme_commands():
    """`$ ponder ...` and `$ torchrun ...` lines from the README's console blocks, in order."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```console\n(.*?)```", text, flags=re.S)
    return [line[2:].strip() for block in blocks for line in block.splitlines() if line.startswith(("$ ponder ", "$ torchrun "))]


def test_setup_commands_come_first():
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1).strip().splitlines()
    commands = [line for line in first_block if line and not line.startswith("#")]
    assert len(commands) == 2
    assert commands[0].endswith("ponder train") and "ponder solve" in commands[0] and "pytest" in commands[1]


def tiny(argv: list[str]) -> list[str]:
    """A training command made quick: TINY settings appended to a new run; a resumed run
    keeps its config, so only its step count shrinks."""
    if "--resume" in argv:
        return [a if not a.startswith("train.steps=") else "train.steps=6" for a in argv]
    return argv + TINY


def test_readme_tour_runs(tmp_path, capsys, monkeypatch):
    """Every command of the tour and of "How do I", in order, in a scratch folder."""
    import torch

    monkeypatch.chdir(tmp_path)
    commands = readme_commands()
    assert any(c.startswith("ponder train") for c in commands) and any(c.startswith("ponder solve") for c in commands)
    for command in commands:
        argv = shlex.split(command)
        if argv[0] == "torchrun":
            run_torchrun(argv, tmp_path)
            continue
        argv = argv[1:]
        if argv[0] == "train":
            argv = tiny(argv)
        code = main(argv)
        if "--device" in argv and argv[argv.index("--device") + 1].startswith("cuda") and not torch.cuda.is_available():
            assert code == 2 and "CUDA is not available" in capsys.readouterr().err, command  # the GPU answer, on a machine without one
            continue
        assert code == 0, command
        capsys.readouterr()


def run_torchrun(argv: list[str], cwd) -> None:
    """A `torchrun ... -m ponder.cli train ...` line on the CPU (gloo), with TINY settings."""
    from test_distributed import env, failure

    launch = [sys.executable, "-m", "torch.distributed.run"] + argv[1:] + TINY + ["train.threads=1"]
    done = subprocess.run(launch, capture_output=True, text=True, env=env(), cwd=cwd)
    if done.returncode != 0 and "Signal 6 (SIGABRT)" in done.stderr:  # see test_distributed
        out = argv[argv.index("--out") + 1]
        shutil.rmtree(cwd / out, ignore_errors=True)
        done = subprocess.run(launch, capture_output=True, text=True, env=env(), cwd=cwd)
    assert done.returncode == 0, failure(done)


def test_readme_python_examples_run():
    """Every ```python block in the README runs as written."""
    import torch

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert blocks
    for block in blocks:
        torch.manual_seed(0)
        exec(compile(block, "README.md", "exec"), {})
