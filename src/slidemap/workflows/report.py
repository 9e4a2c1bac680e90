"""``slidemap report``: one self-contained HTML page of an output folder; and the check that
``predict --report`` and ``evaluate --report`` make before any work."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from slidemap.io.atomic import check_outputs
from slidemap.report.html import build_report, is_report, report_sources
from slidemap.report.provenance import Provenance


@dataclass(frozen=True)
class ReportResult:
    html: Path


def check_report(out_dir: Path, overwrite: bool) -> None:
    """Refuse an existing report.html before any work, as the other outputs are."""
    check_outputs([out_dir / "report.html"], [], overwrite)


def stale_report(out_dir: Path, replaced: Iterable[Path]) -> list[Path]:
    """``out_dir``'s report.html when this run replaces files it was made from: left in place,
    it would show the earlier run's map and figures beside the new files. Removed with the
    outputs it described, also when this run writes a new one: the new page is built only after
    the new files are in place, and a run stopped between the two (Ctrl-C, a failed report)
    would leave the earlier page beside them. A report.html that slidemap did not write (the
    user's own page) is not one, and is left alone, as is a report made before the files
    replaced existed (a prediction's report, when an evaluation is scored again beside it).
    A page that does not list its files goes when any of ``replaced`` exists."""
    page = out_dir / "report.html"
    if not is_report(page):
        return []
    existing = [path for path in replaced if path.exists()]
    sources = report_sources(page)
    if sources is not None:
        existing = [path for path in existing if path.resolve() in sources]
    return [page] if existing else []


def report(folder: Path, out: Path | None = None, image: str | None = None,
           interactive: bool = False, overwrite: bool = False) -> ReportResult:
    """The report of ``folder`` (a run, evaluate or predict folder) at ``out`` (default:
    ``folder/report.html``); ``image``: the imagery under a prediction's map."""
    return ReportResult(build_report(folder, out, Provenance(image=image), interactive,
                                     overwrite))
