"""The one exception type users see: a one-line message that says what to fix."""


class SlidemapError(Exception):
    """Bad input or a failed precondition; the CLI prints it on one line and exits 1.

    Line breaks in the message (a value quoted from a file may hold them) become spaces, so the
    message stays one line whatever it quotes.
    """

    def __init__(self, message: object = "") -> None:
        super().__init__(" ".join(str(message).splitlines()))


def first_line(exc: BaseException) -> str:
    """The first line of a library's error, to quote in a one-line message (its type when it
    says nothing)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class UsageError(SlidemapError):
    """Options that do not go together, or an option value of the wrong form: the CLI exits 2,
    as for an unknown option, and points to the command's ``--help``."""


class SlidemapWarning(UserWarning):
    """Input that can be predicted but probably not well; the CLI prints it on one line."""
