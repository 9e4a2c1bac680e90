"""Write to a temporary name beside the target, move into place only when complete.

Temporary names are hidden (``.NAME.TOKEN-HOST-PID.partial.EXT``, and GDAL's side files of
them, ``EXT.ovr.tmp``) and carry the machine and the id of the process writing them, so that
the next run on that machine into the same folder can sweep those whose process has died (a
``kill -9`` gives no chance to clean up); another machine's (a shared folder) are left alone,
since their process cannot be checked from here.
Outputs that must not replace an existing file are published by a hard link, which fails if the
name exists: two runs into one folder without ``--overwrite`` cannot both succeed, however close
together they check.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import signal
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from slidemap.errors import SlidemapError

# the suffix may hold several extensions: the side files GDAL writes beside a temporary (the
# COG driver's overviews, NAME.partial.tif.ovr.tmp) are the run's temporaries too
TEMPORARY = re.compile(r"^\.(?P<stem>.+)\.[0-9a-f]{8}(?:-(?P<host>[0-9a-f]{6})-(?P<pid>\d+))?"
                       r"\.(?:partial|staged)(?P<suffix>(?:\.[^.]*)*)$")
HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def _temporary(target: Path, kind: str, token: str | None = None) -> Path:
    token = token or uuid.uuid4().hex[:8]
    return target.with_name(f".{target.stem}.{token}-{HOST}-{os.getpid()}.{kind}"
                            f"{target.suffix}")


@contextlib.contextmanager
def atomic_path(target: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path in ``target``'s folder; on success move it onto ``target``.

    On any error (or interruption) the temporary file is removed, so no file that looks complete
    is ever left behind. The temporary name keeps the suffix so drivers pick the right format.
    With ``overwrite`` False an existing ``target`` (even one created meanwhile by another run)
    is left alone and the write fails with a one-line error.
    """
    with staged({"file": Path(target)}, overwrite, kind="partial") as tmps:
        yield tmps["file"]


@contextlib.contextmanager
def scratch_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path in ``target``'s folder for an intermediate file, always removed
    afterwards (named like :func:`atomic_path`'s, so errors still name ``target`` and a killed
    run's leftover is swept)."""
    tmp = _temporary(Path(target), "partial")
    try:
        yield tmp
    finally:
        with contextlib.suppress(OSError):  # a read-only disk: the real error goes on
            tmp.unlink()


@contextlib.contextmanager
def staged(targets: dict[str, Path], overwrite: bool = True,
           kind: str = "staged", retire: Iterable[Path] = ()) -> Iterator[dict[str, Path]]:
    """Temporary names for a set of outputs that belong together, moved into place together.

    Nothing of the set appears under its final name unless every file was written: on an error
    all temporary files are removed and existing files under the final names are left as they
    were (a run with ``--overwrite`` that fails keeps the previous outputs). A failed write that
    names a temporary file is reported with the name the user asked for. ``retire``: files of
    the set that this run does not write (a previous run's other inventory format), removed
    once the set is published, so that a folder never holds one run's files beside another's.
    """
    token = uuid.uuid4().hex[:8]
    tmps = {key: _temporary(Path(path), kind, token) for key, path in targets.items()}
    try:
        try:
            yield tmps
        except OSError as exc:
            if exc.filename is not None and Path(str(exc.filename)) in tmps.values():
                raise write_error(Path(str(exc.filename)), exc) from exc
            raise
        for tmp in tmps.values():
            if tmp.exists():  # some writers (safetensors) create private 0600 files
                os.chmod(tmp, 0o666 & ~_umask())
        with held_signals():
            publish({tmps[key]: Path(target) for key, target in targets.items()}, overwrite)
            for path in retire:
                _remove(Path(path))
    finally:
        for tmp in tmps.values():
            with contextlib.suppress(OSError):  # a read-only disk: the real error goes on
                tmp.unlink()


@contextlib.contextmanager
def held_signals() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM while a set moves into place, and deliver them once it has:
    with ``--overwrite`` its files replace theirs one by one, and a run stopped between two
    moves left one run's probability beside another's mask and Item. Only the main thread
    can set handlers (elsewhere nothing is held), and a signal whose handler Python did not
    set is left as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {signum: handler for signum in (signal.SIGINT, signal.SIGTERM)
                if (handler := signal.getsignal(signum)) is not None}
    for signum in previous:
        signal.signal(signum, lambda number, frame: held.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for number in held:
            signal.raise_signal(number)


def publish(moves: dict[Path, Path], overwrite: bool) -> None:
    """Move each temporary file onto its target. Without ``overwrite`` each target is created
    exclusively (a hard link fails if the name exists); if any exists, the ones this call
    created are removed again and nothing of the set is published. A target that is a folder
    is refused before anything moves: its move would fail after the others had replaced theirs.
    """
    for target in moves.values():
        refuse_folder(target)
    if overwrite:
        for tmp, target in moves.items():
            _move(tmp, target)
        return
    created: list[Path] = []
    try:
        for tmp, target in moves.items():
            try:
                os.link(tmp, target)
            except FileExistsError as exc:
                raise SlidemapError(f"output {target} exists (another run may have written it "
                                    "meanwhile): pass --overwrite or choose another --out"
                                    ) from exc
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                    raise write_error(target, exc) from exc
                if target.exists():  # no hard links here: check, then move
                    raise SlidemapError(f"output {target} exists: pass --overwrite or choose "
                                        "another --out") from exc
                _move(tmp, target)
            created.append(target)
    except BaseException:
        for target in created:
            with contextlib.suppress(OSError):  # a read-only disk: the real error goes on
                target.unlink()
        raise


def refuse_folder(path: Path, option: str = "--out") -> None:
    """A one-line error if ``path``, an output file, is a folder: no file can replace it, and
    ``--overwrite`` would only fail later, once the other outputs had replaced theirs."""
    if path.is_dir():
        raise SlidemapError(f"output {path} is a folder: remove it or choose another {option}")


def _remove(path: Path) -> None:
    """Remove a retired output; one that is not there is fine."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise write_error(path, exc) from exc


def _move(tmp: Path, target: Path) -> None:
    try:
        os.replace(tmp, target)
    except OSError as exc:
        raise write_error(target, exc) from exc


def write_error(path: Path, exc: OSError) -> SlidemapError:
    """A failed write as one line naming the file the user asked for, not its temporary."""
    target = final_path(path)
    reason = "no space left on the disk" if exc.errno == errno.ENOSPC else (
        exc.strerror or type(exc).__name__)
    return SlidemapError(f"cannot write {target} ({reason}): check free disk space and that "
                         f"{target.parent} is writable")


def final_path(path: str | Path) -> Path:
    """The name a temporary file of :func:`atomic_path` or :func:`staged` will be moved to."""
    path = Path(path)
    while match := TEMPORARY.match(path.name):
        path = path.with_name(match["stem"] + (match["suffix"] or ""))
    return path


def sweep_stale(folder: Path) -> list[Path]:
    """Remove the temporary files in ``folder`` left by processes of this machine that died
    before they could clean up; returns what was removed. Files of a live process (another run
    writing now), of another machine or user, and older ones without a machine and process in
    their name are left alone."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            match = TEMPORARY.match(entry.name)
            if match is None or match["host"] != HOST or _alive(int(match["pid"])):
                continue
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False) and entry.stat().st_uid == os.getuid():
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def resolved(path: Path) -> Path:
    """``path`` with links and ``..`` resolved, or a one-line error for a link loop."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as exc:
        raise SlidemapError(f"{path} is a symbolic link that loops (or cannot be followed): "
                            "fix the link or pass the real file") from exc


def _same_file(a: Path, b: Path) -> bool:
    with contextlib.suppress(OSError):
        return os.path.samefile(a, b)
    return False


def check_outputs(paths: Iterable[Path], inputs: Iterable[Path | None],
                  overwrite: bool, option: str = "--out") -> None:
    """Refuse to overwrite inputs ever, and existing outputs unless ``overwrite``.

    Every command calls this with every file it reads (images, DEMs, truths, model files and
    their sidecars, configs): paths are compared resolved (links, ``..``) and, where both exist,
    as the same file on disk (hard links, bind mounts). ``option`` names where the user chose
    the outputs.
    """
    read = [Path(p) for p in inputs if p is not None]
    resolved_inputs = {resolved(p) for p in read}
    for path in paths:
        path = Path(path)
        if resolved(path) in resolved_inputs or any(_same_file(path, p) for p in read):
            raise SlidemapError(f"output {path} would overwrite an input: choose another "
                                f"{option}")
        refuse_folder(path, option)
        if path.is_symlink() and not path.exists():
            raise SlidemapError(f"output {path} is a broken or looping symbolic link: remove it "
                                f"or choose another {option}")
        if path.exists() and not overwrite:
            raise SlidemapError(f"output {path} exists: pass --overwrite or choose another "
                                f"{option}")


def make_output_dir(path: Path, what: str = "output folder") -> None:
    """Create an output folder, or fail with one line that says to choose a writable one; then
    sweep the temporary files of dead earlier runs from it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except RuntimeError as exc:
        raise SlidemapError(f"cannot create {what} {path} (a symbolic link loops): "
                            "choose another --out") from exc
    except OSError as exc:
        raise SlidemapError(f"cannot create {what} {path} ({exc.strerror}): "
                            "choose a writable --out") from exc
    sweep_stale(path)


LOCK_NAME = ".slidemap.lock"


@contextlib.contextmanager
def output_folder(folder: Path, what: str = "output folder") -> Iterator[None]:
    """:func:`make_output_dir` for the block's outputs; the folders this call had to create
    (``--out new/run`` creates ``new`` too) are removed again if the block left nothing in
    them (a run refused on a bad input leaves no empty folder behind)."""
    created = _missing(folder)
    make_output_dir(folder, what)
    try:
        yield
    finally:
        for path in created:  # innermost first; only while empty
            try:
                path.rmdir()
            except OSError:
                break


def _missing(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist, innermost first."""
    missing = []
    for path in (folder, *folder.parents):
        if path.exists() or path.is_symlink():
            break
        missing.append(path)
    return missing


@contextlib.contextmanager
def folder_lock(folder: Path, what: str = "output folder") -> Iterator[None]:
    """Hold ``folder`` for one run: a second run into it fails at once with one line instead of
    interleaving its files with this one's (run folders are written over many minutes, file by
    file). The lock is an exclusive ``flock`` on ``folder/.slidemap.lock``, released, and the
    file removed, when the block ends or the process dies; a folder this call had to create is
    removed again if the run left nothing in it."""
    with output_folder(folder, what), _flock(folder, what):
        yield


@contextlib.contextmanager
def _flock(folder: Path, what: str) -> Iterator[None]:
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino != os.stat(path).st_ino:  # removed by the run it waited on
            raise BlockingIOError
    except OSError as exc:
        os.close(fd)
        raise SlidemapError(f"another slidemap run is writing into {what} {folder}: wait for "
                            "it to finish or choose another --out") from exc
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)


def claim_file(path: Path, text: str, load: Callable[[str], object], conflict: str) -> None:
    """Write ``text`` to ``path`` the first time; later, refuse with ``conflict`` if what the file
    holds reads (``load``) otherwise: a rerun continues its own run folder, never another's."""
    if path.exists():
        if load(path.read_text()) != load(text):
            raise SlidemapError(conflict)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
