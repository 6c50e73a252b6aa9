"""User-facing errors.

Anything the user can fix (a config key, a missing file, an unknown name) raises `PeftbenchError`;
the CLI prints its message as one line on stderr and exits with code 2. Everything else is a bug
and keeps its traceback.
"""


class PeftbenchError(Exception):
    """An error caused by the user's input, reported as one line and exit code 2."""

    def __init__(self, message: str) -> None:
        # The message quotes user input (keys, names, paths), which may hold newlines or control
        # characters: escape them so that the report stays one line whatever the input.
        super().__init__("".join(c if c.isprintable() else repr(c)[1:-1] for c in message))
