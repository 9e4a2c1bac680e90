"""One-line messages through :mod:`logging`, as the command line prints them, in its own process
and in the worker processes it starts (which begin with logging unconfigured)."""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, ClassVar, TextIO

if TYPE_CHECKING:
    from rich.console import Console

LOGGER = "slidemap"


class OneLineHandler(logging.Handler):
    """Messages on the stderr of the moment, as they are; warnings and errors on one line behind
    ``warning:`` or ``error:`` (in colour on a terminal). Never read as rich markup, so a path
    such as ``scene[bold].tif`` prints as it is; above the progress bar while one is shown."""

    PREFIXES: ClassVar[dict[int, tuple[str, str, str]]] = {
        logging.DEBUG: ("debug: ", "2", "dim"),
        logging.WARNING: ("warning: ", "1;33", "bold yellow"),
        logging.ERROR: ("error: ", "1;31", "bold red"),
        logging.CRITICAL: ("error: ", "1;31", "bold red")}

    def __init__(self) -> None:
        super().__init__()
        self.live: Console | None = None  # the console of the progress bar being shown

    def emit(self, record: logging.LogRecord) -> None:
        try:
            prefix, colour, style = self.PREFIXES.get(record.levelno, ("", "", ""))
            text = record.getMessage()
            if prefix:
                text = " ".join(line.strip() for line in text.splitlines() if line.strip())
            if self.live is not None:
                from rich.text import Text

                self.live.print(Text(prefix, style=style) + text, soft_wrap=True)
                return
            stream = sys.stderr
            if prefix and _colour(stream):
                prefix = f"\x1b[{colour}m{prefix}\x1b[0m"
            stream.write(f"{prefix}{text}\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def show_messages(level: int) -> OneLineHandler:
    """Print the ``slidemap`` loggers' messages from ``level`` up on stderr, through one handler
    per process however often this is called."""
    logger = logging.getLogger(LOGGER)
    handler = next((h for h in logger.handlers if isinstance(h, OneLineHandler)), None)
    if handler is None:
        handler = OneLineHandler()
        logger.addHandler(handler)
    logger.propagate = False  # the command line owns the process: no second copy via the root
    logger.setLevel(level)
    return handler


def _colour(stream: TextIO) -> bool:
    """Colour only on a terminal, and never where NO_COLOR is set (no-color.org)."""
    return stream.isatty() and not os.environ.get("NO_COLOR")
