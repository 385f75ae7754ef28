"""The one error type users see.

Anything caused by bad input (a malformed puzzle, a broken CSV row, an unknown config
key, a missing or corrupt run folder) raises `PonderInputError` with a one-line message
that names the file, line or key and what was expected. The CLI prints that line and
exits with status 2; library users can catch it like any `ValueError`.
`read_json` reads the JSON files a user hands over (manifests, configs) on those terms.
"""

import json
from pathlib import Path
from typing import Any


class PonderInputError(ValueError):
    """Bad user input: the message is one line naming where and what was expected."""


def read_json(path: Path, hint: str) -> Any:
    """The JSON value in `path`. A file that cannot be read, is not UTF-8 or is not valid
    JSON raises `PonderInputError` naming the file (and line and column), then `hint`:
    what the file should be, or how to make a good one."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise PonderInputError(f"{path}: not UTF-8 text; {hint}") from None
    except OSError as e:
        raise PonderInputError(f"{path}: cannot be read ({e.strerror or e}); {hint}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise PonderInputError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); {hint}") from None
