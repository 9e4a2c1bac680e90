"""Write to a temporary name beside the target, move into place only when complete."""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

from slidemap.errors import SlidemapError


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path in ``target``'s folder; on success rename it onto ``target``.

    On any error (or interruption) the temporary file is removed, so no file that looks complete
    is ever left behind. The temporary name keeps the suffix so drivers pick the right format.
    """
    target = Path(target)
    tmp = target.with_name(f".{target.stem}.{uuid.uuid4().hex[:8]}.partial{target.suffix}")
    try:
        yield tmp
        if tmp.exists():  # some writers (safetensors) create private 0600 files
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def scratch_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path in ``target``'s folder for an intermediate file, always removed
    afterwards (named like :func:`atomic_path`'s, so errors still name ``target``)."""
    target = Path(target)
    tmp = target.with_name(f".{target.stem}.{uuid.uuid4().hex[:8]}.partial{target.suffix}")
    try:
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def staged(targets: dict[str, Path]) -> Iterator[dict[str, Path]]:
    """Temporary names for a set of outputs that belong together, moved into place together.

    Nothing of the set appears under its final name unless every file was written: on an error
    all temporary files are removed and existing files under the final names are left as they
    were (a run with ``--overwrite`` that fails keeps the previous outputs).
    """
    token = uuid.uuid4().hex[:8]
    tmps = {key: path.with_name(f".{path.stem}.{token}.staged{path.suffix}")
            for key, path in targets.items()}
    try:
        yield tmps
        for key, target in targets.items():
            os.replace(tmps[key], target)
    finally:
        for tmp in tmps.values():
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


TEMPORARY = re.compile(r"^\.(?P<stem>.+)\.[0-9a-f]{8}\.(?:partial|staged)(?P<suffix>\.[^.]*)?$")


def final_path(path: str | Path) -> Path:
    """The name a temporary file of :func:`atomic_path` or :func:`staged` will be moved to."""
    path = Path(path)
    while match := TEMPORARY.match(path.name):
        path = path.with_name(match["stem"] + (match["suffix"] or ""))
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_outputs(paths: list[Path], inputs: list[Path], overwrite: bool) -> None:
    """Refuse to overwrite inputs ever, and existing outputs unless ``overwrite``."""
    resolved_inputs = {p.resolve() for p in inputs}
    for path in paths:
        if path.resolve() in resolved_inputs:
            raise SlidemapError(f"output {path} would overwrite an input: choose another --out")
        if path.exists() and not overwrite:
            raise SlidemapError(f"output {path} exists: pass --overwrite or choose another --out")


def make_output_dir(path: Path, what: str = "output folder") -> None:
    """Create an output folder, or fail with one line that says to choose a writable one."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SlidemapError(f"cannot create {what} {path} ({exc.strerror}): "
                            "choose a writable --out") from exc
