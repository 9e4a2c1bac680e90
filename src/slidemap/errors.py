"""The one exception type users see: a one-line message that says what to fix."""


class SlidemapError(Exception):
    """Bad input or a failed precondition; the CLI prints it on one line and exits 1."""


class UsageError(SlidemapError):
    """Options that do not go together, or an option value of the wrong form: the CLI exits 2,
    as for an unknown option, and points to the command's ``--help``."""


class SlidemapWarning(UserWarning):
    """Input that can be predicted but probably not well; the CLI prints it on one line."""
