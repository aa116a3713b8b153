"""The one exception type for a user's mistake.

Anything raised as :class:`UserError` is shown by the CLI as a single line (no traceback) and
ends the process with exit code 2. Its message names the field or file, what was wrong, and what
is allowed.
"""


class UserError(Exception):
    """A mistake in the user's input: configuration, files, names, ranges."""
