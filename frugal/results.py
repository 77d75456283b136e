"""The committed GPU measurements (results/<device>.json, written by `python -m frugal bench`), for the lessons.

A lesson shows what this machine measures beside what a GPU measured, labelled with that GPU and the date:
`results.newest("checkpointing")` is the newest run of a bench section on any device, or None when the
results folder is not there (a wheel installed without the repository, as on Colab).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"   # the repository's results/ folder


@dataclass(frozen=True)
class Measured:
    """One bench section as measured on one device."""
    section: str
    rows: list[dict]
    device: str          # 'H200' or '2× H200'
    when: str            # '2026-12-02 04:43 UTC'
    file: str            # 'h200.json'

    @property
    def label(self) -> str:
        """'H200, 2026-12-02': what a figure measured there is captioned with."""
        return f"{self.device}, {self.when[:10]}"

    def row(self, **match) -> dict | None:
        """The first row whose fields equal every keyword given, e.g. row(policy='full', impl='frugal')."""
        return next((r for r in self.rows if all(r.get(k) == v for k, v in match.items())), None)


def device_label(device: dict) -> str:
    """'H100' or '2× H200': the catalog name and how many GPUs."""
    name = device.get("catalog") or device.get("name") or device.get("device", "?")
    gpus = device.get("gpus") or 0
    return f"{gpus}× {name}" if gpus > 1 else name


def measured(section: str, results_dir: str | Path | None = None) -> list[Measured]:
    """Every device's run of a bench section, newest first (an empty list if none was committed)."""
    folder = Path(results_dir) if results_dir is not None else RESULTS_DIR
    runs = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue                                    # a damaged file is the bench's to report, not a lesson's
        sec = data.get("sections", {}).get(section)
        if sec and sec.get("rows"):
            runs.append(Measured(section, sec["rows"], device_label(data.get("device", {})), sec.get("when", ""),
                                 path.name))
    return sorted(runs, key=lambda m: m.when, reverse=True)


def newest(section: str, results_dir: str | Path | None = None) -> Measured | None:
    """The newest committed run of a bench section, or None."""
    runs = measured(section, results_dir)
    return runs[0] if runs else None
