"""The README's commands run (a tiny variant: training gets small settings appended)."""

import re
import shlex

from conftest import ROOT, TINY
from ponder.cli import main

RUN = "runs/sudoku"


def readme_commands():
    """`$ ponder ...` lines from the README's console blocks, in order."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```console\n(.*?)```", text, flags=re.S)
    return [line[2:].strip() for block in blocks for line in block.splitlines() if line.startswith("$ ponder ")]


def test_setup_commands_come_first():
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1).strip().splitlines()
    commands = [line for line in first_block if line and not line.startswith("#")]
    assert len(commands) == 2
    assert commands[0].endswith("ponder train") and "pytest" in commands[1]


def test_readme_tour_runs(tmp_path, capsys):
    commands = readme_commands()
    assert any(c.startswith("ponder train") for c in commands) and any(c.startswith("ponder solve") for c in commands)
    for command in commands:
        argv = shlex.split(command.replace(RUN, str(tmp_path / "sudoku")))[1:]
        if argv[0] == "train":
            argv += TINY
        assert main(argv) == 0, command
        capsys.readouterr()


def test_readme_python_examples_run():
    """Every ```python block in the README runs as written."""
    import torch

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert blocks
    for block in blocks:
        torch.manual_seed(0)
        exec(compile(block, "README.md", "exec"), {})
