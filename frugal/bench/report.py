"""`python -m frugal report`: the committed results/<device>.json files as markdown in human units.

results/README.md gets every table of every device (one table per kind of row, GB / ms / tokens/s / GB/s);
README.md's results block gets the headline lines each section picks from its rows, linking to the full tables.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from frugal.bench.runner import REPORTS, SECTIONS
from frugal.results import device_label
from frugal.serialization import write_atomic

README_START = "<!-- results:start (written by `python -m frugal report`) -->"
README_END = "<!-- results:end -->"


def _sig(x: float) -> str:
    """A number for a table: 1,234 / 123.4 / 12.34 / 0.0123 (thousands separated, small ones to 3 digits)."""
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.1f}"
    if abs(x) >= 1 or x == 0:
        return f"{x:.2f}"
    return f"{x:.3g}"


UNITS: dict[str, Callable[[float], str]] = {      # how a Column writes a value of each unit
    "": _sig,
    "GB": lambda v: _sig(v / 1e9),                 # bytes -> GB (1e9 bytes)
    "MB": lambda v: _sig(v / 1e6),                 # bytes -> MB (1e6 bytes)
    "ms": _sig,                                    # already milliseconds
    "s->ms": lambda v: _sig(v * 1e3),              # seconds -> milliseconds
    "tok/s": lambda v: f"{v:,.0f}",
    "GB/s": lambda v: f"{v:,.0f}" if v >= 100 else f"{v:.3g}",
    "M": lambda v: f"{v / 1e6:,.1f}M",             # a count in millions (parameters)
    "int": lambda v: f"{int(v):,}",
    "%": lambda v: f"{100 * v:.1f}%",              # a fraction as a percentage
    "%raw": lambda v: f"{v:.1f}%",                 # already a percentage
    "+%": lambda v: f"{100 * v:+.1f}%",            # a fractional change: 0.14 -> +14.0%
    "ratio+%": lambda v: f"{100 * (v - 1):+.1f}%",  # a ratio as a change: 1.14 -> +14.0%
    "x": lambda v: f"{v:.2f}×",                    # a ratio
}


@dataclass
class Column:
    key: str | Callable[[dict], object]   # the row's key, or a function of the row
    header: str                           # the table's heading for it, with its unit
    unit: str = ""                        # a key of UNITS; text and booleans are written as they are

    def cell(self, row: dict) -> str:
        v = self.key(row) if callable(self.key) else row.get(self.key)
        if v is None or v == "":
            return ""
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, int) and self.unit == "":
            return f"{v:,}"
        if isinstance(v, (int, float)):
            return UNITS[self.unit](v)
        return str(v).replace("|", "\\|")


@dataclass
class Table:
    title: str                                   # a heading; {field}s are filled from the table's first row
    columns: list[Column]
    where: Callable[[dict], bool] | None = None  # which of the section's rows; None = every row
    note: str = ""                               # a line under the table: what the numbers are measured against
    split: str | None = None                     # a row key: one table per value of it, in the rows' order


class _Blank(dict):
    def __missing__(self, key):
        return "?"


def _table(title: str, columns: list[Column], rows: list[dict]) -> list[str]:
    cells = [[c.cell(r) for c in columns] for r in rows]
    keep = [i for i in range(len(columns)) if any(row[i] for row in cells)]   # no column left empty
    out = [f"**{title}**", "", "| " + " | ".join(columns[i].header for i in keep) + " |",
           "|" + "---|" * len(keep)]
    out += ["| " + " | ".join(row[i] for i in keep) + " |" for row in cells]
    return out + [""]


def _groups(t: Table, rows: list[dict]) -> list[list[dict]]:
    """The rows table t picks: one group, or with t.split one per value of that key (rows without it together),
    in the order the values first appear, so that a title filled from a group's first row holds for all of it."""
    picked = [r for r in rows if t.where is None or t.where(r)]
    if not t.split:
        return [picked] if picked else []
    groups: dict[object, list[dict]] = {}
    for r in picked:
        groups.setdefault(r.get(t.split), []).append(r)
    return list(groups.values())


def _in_lesson_order(sections: dict) -> list[tuple[str, dict]]:
    """A results file's sections in the order `run` runs them (the lessons' order); unknown ones last."""
    order = {name: i for i, name in enumerate(SECTIONS)}
    return sorted(sections.items(), key=lambda kv: order.get(kv[0], len(order)))


def _section_markdown(name: str, sec: dict, slug: str) -> list[str]:
    rows = sec.get("rows", [])
    out = [f"### {name}", "", f"Measured {sec.get('when', '?')} by `python -m frugal bench --section {name}`"
           f" ({sec.get('seconds', '?')} s).", ""]
    spec = REPORTS.get(name)
    shown: set[int] = set()
    for t in (spec.tables if spec else []):
        for picked in _groups(t, rows):
            shown |= {id(r) for r in picked}
            out += _table(t.title.format_map(_Blank(picked[0])), t.columns, picked)
            if t.note:
                out += [t.note, ""]
    rest = [r for r in rows if id(r) not in shown]
    if rest:                                     # rows no table claims: every column, as they were saved
        keys = list(dict.fromkeys(k for r in rest for k in r))
        out += _table("Other rows", [Column(k, k) for k in keys], rest)
    out += [f"![{name}: {f.removeprefix(f'{slug}_{name}_').removesuffix('.png')}]({f})" for f in sec.get("figures", [])]
    return out + [""]


def _results(results_dir: str | Path) -> list[tuple[Path, dict]]:
    return [(p, json.loads(p.read_text())) for p in sorted(Path(results_dir).glob("*.json"))]


def markdown_report(results_dir: str | Path = "results") -> str:
    """Every results/<device>.json as markdown: a heading per device, per section its tables and figures."""
    parts = ["# Measured results", "",
             "Written by `python -m frugal report` from the JSON files in this folder, which "
             "`python -m frugal bench` writes on the hardware it runs on. Timings warm up, synchronize and report "
             "the median of repeats. GB = 1e9 bytes.", ""]
    for path, data in _results(results_dir):
        d = data.get("device", {})
        host = data.get("host", {})
        parts += [f"## {d.get('name', path.stem)} (`{path.name}`)", "",
                  f"{d.get('gpus', 0)} GPU{'' if d.get('gpus') == 1 else 's'}, torch {d.get('torch_version', '?')}, "
                  f"{host.get('torch_threads', '?')} CPU threads, {host.get('platform', '?')}.", ""]
        for name, sec in _in_lesson_order(data.get("sections", {})):
            parts += _section_markdown(name, sec, path.stem)
    return "\n".join(parts).rstrip() + "\n"


MAX_HEADLINES = 12   # README's table: every section's first headline, then the others while room is left


def headline_report(results_dir: str | Path = "results", link: str = "results/README.md") -> str:
    """The headline lines of every section as one short markdown table, linking to the full tables. A section
    measured on several devices gives the headlines of its newest measurement; every run stays in the full tables."""
    newest: dict[str, tuple[dict, str]] = {}
    for _, data in _results(results_dir):
        for name, sec in data.get("sections", {}).items():
            if name not in newest or sec.get("when", "") > newest[name][0].get("when", ""):
                newest[name] = (sec, device_label(data.get("device", {})))
    order = {name: i for i, name in enumerate(SECTIONS)}
    names = sorted(newest, key=lambda n: order.get(n, len(order)))        # the lessons' order
    found = {}
    for name in names:
        spec = REPORTS.get(name)
        found[name] = spec.headlines(newest[name][0].get("rows", [])) if spec and spec.headlines else []
    # every section's first headline, then second ones in the lessons' order while the table stays short
    kept = {name: found[name][:1] for name in names}
    room = MAX_HEADLINES - sum(len(v) for v in kept.values())
    for name in names:
        for extra in found[name][1:]:
            if room > 0:
                kept[name].append(extra)
                room -= 1
    lines = ["| what | measured | where |", "|---|---|---|"]
    for name in names:
        sec, where = newest[name]
        day = sec.get("when", "")[:10]
        for what, measured in kept[name]:
            lines.append(f"| {what} | {measured} | {where}, {day}, [`{name}`]({link}) |")
    return "\n".join(lines) + f"\n\nEvery table, per device, with its figures: [{link}]({link}).\n"


def update_readme(readme: str | Path = "README.md", results_dir: str | Path = "results") -> bool:
    """Write <results_dir>/README.md (every table) and README.md's results block (the headlines);
    True if either file changed."""
    readme, results_dir = Path(readme), Path(results_dir)
    if not readme.is_file():
        raise ValueError(f"{readme} is not a file: pass --readme PATH, the README.md holding the results block")
    if not results_dir.is_dir():
        raise ValueError(f"{results_dir} is not a folder: pass --results PATH, where `bench` wrote <device>.json")
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme} has no results block: add the lines {README_START!r} and {README_END!r}")
    full = results_dir / "README.md"
    old_full = full.read_text() if full.exists() else None
    write_atomic(full, markdown_report(results_dir))
    link = Path(os.path.relpath(full, readme.parent)).as_posix()
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    new = f"{head}{README_START}\n{headline_report(results_dir, link)}{README_END}{tail}"
    write_atomic(readme, new)
    return new != text or full.read_text() != old_full
