"""The benchmark runner: a registry of sections, the context each one gets, and `run`, which writes what they return.

A section is a function of a BenchContext returning {"rows": [dict, ...], "figures": {name: Figure}, ...}. Results
go to <out>/<device>.json, merged with the sections already there, and figures to <out>/<device>_<section>_<name>.png.
"""
from __future__ import annotations

import gc
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from frugal import device as dev
from frugal.serialization import write_atomic
from frugal.model import GPTConfig, TinyGPT

SECTIONS: dict[str, Callable[["BenchContext"], dict]] = {}   # name -> section, in the order of the run
REPORTS: dict[str, "SectionReport"] = {}                      # name -> how `python -m frugal report` shows it


@dataclass
class SectionReport:
    tables: list = field(default_factory=list)   # report.Table specs: which rows, which columns, which units
    headlines: Callable[[list[dict]], list[tuple[str, str]]] | None = None   # rows -> [(what, measured)]


def section(name: str, tables: list | None = None, headlines: Callable | None = None):
    """Register a benchmark section under `name` (order of registration = order of the run), with the tables
    and headline lines the report writes from its rows."""
    def wrap(fn):
        SECTIONS[name] = fn
        REPORTS[name] = SectionReport(list(tables or []), headlines)
        return fn
    return wrap


@dataclass
class BenchContext:
    device: torch.device
    slug: str            # results/<slug>.json
    out_dir: Path
    quick: bool          # smaller sizes and fewer repeats (tests and CI use this)


MAX_RANKS = 8   # the most ranks a bench launches: one host's GPUs


def rank_counts(gpus: int) -> list[int]:
    """The world sizes a multi-rank section (zero, model_parallel) runs at with `gpus` GPUs: [2] gloo CPU ranks
    below 2 GPUs; every GPU up to 4; on a larger host 4 and every GPU up to MAX_RANKS (8 GPUs: [4, 8]), so hosts
    of 4 and of 8 GPUs compare at 4 ranks."""
    if gpus < 2:
        return [2]
    return sorted({min(gpus, 4), min(gpus, MAX_RANKS)})


def meta_model(cfg: GPTConfig) -> TinyGPT:
    """A TinyGPT on the meta device: its parameter counts without allocating memory."""
    with torch.device("meta"):
        return TinyGPT(cfg)


def fresh_device(device: torch.device) -> None:
    """Start a section with nothing left from the one before: compiled graphs (they hold their models), objects
    in reference cycles, cached GPU blocks. Leftovers would count in a later section's peak and memory cap."""
    if "torch._dynamo" in sys.modules:
        torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def print_table(name: str, rows: list[dict]) -> None:
    """The rows as the terminal shows them: every column, floats to 4 significant digits."""
    if not rows:
        return
    cols = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    widths = {c: max(len(c), *(len(fmt(r.get(c, ""))) for r in rows)) for c in cols}
    print(f"\n== {name}")
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(fmt(r.get(c, "")).ljust(widths[c]) for c in cols))


def run(sections: list[str] | None = None, out_dir: str | Path = "results", quick: bool = False,
        device: str | None = None) -> dict:
    """Run the named sections (all by default), print their tables, write JSON and figures."""
    unknown = set(sections or []) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown bench sections {sorted(unknown)}: pick from {list(SECTIONS)}")
    ctx = BenchContext(dev.pick_device(device), dev.device_slug(device), Path(out_dir), quick)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    path = ctx.out_dir / f"{ctx.slug}.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results["device"] = asdict(dev.describe(ctx.device))
    results["host"] = {"torch_threads": torch.get_num_threads(), "platform": platform.platform()}
    results.setdefault("sections", {})
    for name in sections or list(SECTIONS):
        fresh_device(ctx.device)
        t0 = time.perf_counter()
        out = SECTIONS[name](ctx)
        figures = out.pop("figures", {})
        files = []
        for fig_name, fig in figures.items():
            f = ctx.out_dir / f"{ctx.slug}_{name}_{fig_name}.png"
            fig.savefig(f, dpi=110)
            files.append(f.name)
        out["figures"] = files
        out["seconds"] = round(time.perf_counter() - t0, 1)
        out["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        results["sections"][name] = out
        print_table(name, out.get("rows", []))
        write_atomic(path, json.dumps(results, indent=2, default=str) + "\n")   # a killed run leaves the old file whole
    print(f"\nwrote {path}")
    return results
