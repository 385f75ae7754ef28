"""The one error type users see.

Anything caused by bad input (a malformed puzzle, a broken CSV row, an unknown config
key, a missing or corrupt run folder) raises `PonderInputError` with a one-line message
that names the file, line or key and what was expected. The CLI prints that line and
exits with status 2; library users can catch it like any `ValueError`.
`read_text` and `read_json` read the files a user hands over (puzzle files, YAML and
JSON configs, manifests) on those terms.
"""

import json
from pathlib import Path
from typing import Any


class PonderInputError(ValueError):
    """Bad user input: the message is one line naming where and what was expected."""


def read_text(path: Path, hint: str) -> str:
    """The UTF-8 text of a file a user hands over. A file that cannot be read or is not
    UTF-8 raises `PonderInputError` naming the file (and the line of the first bad byte),
    then `hint`: what the file should be."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise PonderInputError(f"{path}: cannot be read ({e.strerror or e}); {hint}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise PonderInputError(f"{path}:{line}: not UTF-8 text (byte {data[e.start]:#04x}); {hint}") from None


def read_json(path: Path, hint: str) -> Any:
    """The JSON value in `path`. A file that cannot be read, is not UTF-8 or is not valid
    JSON raises `PonderInputError` naming the file (and line and column), then `hint`:
    what the file should be, or how to make a good one."""
    text = read_text(path, hint)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise PonderInputError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); {hint}") from None


def require_fields(record: Any, fields: dict[str, type | tuple[type, ...]], where: Path | str, hint: str) -> dict[str, Any]:
    """`record` as a dict holding each of `fields` with its type (an int field is not a
    bool; a dict field's keys are strings), else a one-line `PonderInputError` naming
    the file and the first bad field, then `hint`."""
    if not isinstance(record, dict):
        raise PonderInputError(f"{where}: expected a JSON object, got {type(record).__name__}; {hint}")
    for name, kind in fields.items():
        value = record.get(name)
        kinds = kind if isinstance(kind, tuple) else (kind,)
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if not ok:
            expected = " or ".join(k.__name__ for k in kinds)
            got = "missing" if name not in record else f"{type(value).__name__} {json.dumps(value)[:40]}"
            raise PonderInputError(f"{where}: field '{name}' is {got}; expected {expected}; {hint}")
    return record


def plain_file_name(name: str, where: Path | str, field: str) -> str:
    """`name` if it names a file in the same folder (no separators, no leading dot)."""
    if not name or Path(name).name != name or name.startswith("."):
        raise PonderInputError(f"{where}: field '{field}' is {name!r}; expected a file name in the same folder")
    return name
