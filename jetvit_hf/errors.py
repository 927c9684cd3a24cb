"""The error a user can cause and fix: a bad flag value, a missing, misplaced or broken file."""


class JetViTUserError(ValueError):
    """Something the user can fix, said in one line that names the flag or file and what was expected.

    `jetvit` prints the message alone, without a traceback, and exits with status 2. It is a ValueError, so code that
    catches ValueError from the Python API keeps working.
    """
