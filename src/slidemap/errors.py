"""The one exception type users see: a one-line message that says what to fix."""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator


class SlidemapError(Exception):
    """Bad input or a failed precondition; the CLI prints it on one line and exits 1.

    Line breaks in the message (a value quoted from a file may hold them) become spaces, so the
    message stays one line whatever it quotes.
    """

    def __init__(self, message: object = "") -> None:
        super().__init__(" ".join(str(message).splitlines()))


@contextlib.contextmanager
def silenced(category: type[Warning], message: str = "") -> Iterator[None]:
    """Hide one kind of library warning in the block. Warning filters are process-wide, so
    blocks that change them (reader threads among them) take turns: none restores the filters
    another has just changed."""
    with _FILTERS_LOCK, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=message, category=category)
        yield


_FILTERS_LOCK = threading.Lock()


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
