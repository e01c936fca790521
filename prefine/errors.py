"""One base class for problems the user can fix: stages print them as one line and exit 1."""


class PrefineError(Exception):
    """Bad input or configuration; the message names the file, row or key to fix."""
