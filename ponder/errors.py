"""The one error type users see.

Anything caused by bad input (a malformed puzzle, a broken CSV row, an unknown config
key, a missing or corrupt run folder) raises `PonderInputError` with a one-line message
that names the file, line or key and what was expected. The CLI prints that line and
exits with status 2; library users can catch it like any `ValueError`.
"""


class PonderInputError(ValueError):
    """Bad user input: the message is one line naming where and what was expected."""
