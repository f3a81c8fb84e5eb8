"""The one exception type for user mistakes: the CLI prints its message as a single line."""


class FrernnError(Exception):
    """A user-facing error (bad spec, missing dataset, ...) reported without a traceback."""
