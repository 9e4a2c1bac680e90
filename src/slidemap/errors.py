"""The one exception type users see: a one-line message that says what to fix."""


class SlidemapError(Exception):
    """Bad input or a failed precondition; the CLI prints it on one line and exits non-zero."""


class SlidemapWarning(UserWarning):
    """Input that can be predicted but probably not well; the CLI prints it on one line."""
