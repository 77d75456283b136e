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


# ----------------------------------------------------------------------------- what each lesson draws from a run

def checkpointing_curves(run: Measured) -> dict:
    """Lesson 02: the committed checkpointing run as plots.recompute_tradeoff's reference, ours and torch's
    curve over 0..L checkpointed blocks (as the bench draws it), selective recompute and √n as points."""
    none = run.row(policy="none")
    if none is None:
        raise ValueError(f"{run.file}: the checkpointing section has no policy='none' row to start the curves from")
    firsts = [r for r in run.rows if str(r.get("policy", "")).startswith("first:")]
    n_layer = max((int(r["policy"].split(":")[1]) for r in firsts), default=0) + 1
    series = {}
    for impl, name in (("frugal", "ours"), ("torch", "torch.utils.checkpoint")):
        steps = sorted((r for r in firsts if r["impl"] == impl), key=lambda r: int(r["policy"].split(":")[1]))
        full = run.row(policy="full", impl=impl)
        series[name] = ([dict(none, label="0")] + [dict(r, label=r["policy"].split(":")[1]) for r in steps]
                        + ([dict(full, label=str(n_layer))] if full else []))
    selective = [dict(r, label=r.get("label") or "sel") for r in run.rows if r.get("policy") == "selective"]
    sqrt = [dict(r, label="√n") for r in run.rows if r.get("policy") == "sqrt"]
    return {"series": series, "alternatives": {"ours, selective": selective, "√n segments": sqrt}}


def data_parallel_steps(run: Measured, world_size: int = 2) -> tuple[float, dict[str, float]]:
    """Lesson 03: (step ms of one GPU without data parallel, {flavour: step ms on world_size GPUs}) from the
    committed data_parallel run; the difference is the communication backward did not hide."""
    alone = run.row(flavour="none", world_size=1)
    if alone is None:
        raise ValueError(f"{run.file}: the data_parallel section has no flavour='none' world_size=1 row")
    steps = {r["flavour"]: r["step_ms"] for r in run.rows
             if r.get("world_size") == world_size and r.get("flavour") not in (None, "none")}
    return alone["step_ms"], steps


def recipe_ranking(run: Measured) -> dict[str, dict]:
    """Lesson 07: the committed recipe candidates as plots.recipe_runs draws them (tokens/s, peak memory,
    US$ per billion tokens at the GPU's catalog price), the pairs' summary rows left out."""
    dollars = next((k for r in run.rows for k in r if k.startswith("usd_per_billion_tokens")), None)
    return {r["recipe"]: {"tokens_per_s": r["tokens_per_s"], "memory_bytes": r["peak_memory_bytes"],
                          "dollars_per_billion_tokens": r[dollars]}
            for r in run.rows if "tokens_per_s" in r and dollars in r}


def pipeline_bubbles(run: Measured) -> tuple[int, dict[str, dict[int, float]]]:
    """Lesson 05: (stages, {schedule: {micro-batches: measured bubble fraction}}) of the committed pipeline runs."""
    rows = [r for r in run.rows if r.get("part") == "pipeline" and "bubble_measured" in r]
    if not rows:
        raise ValueError(f"{run.file}: the model_parallel section has no pipeline rows with a measured bubble")
    bubbles: dict[str, dict[int, float]] = {}
    for r in rows:
        bubbles.setdefault(r["schedule"], {})[r["m"]] = r["bubble_measured"]
    return rows[0]["ranks"], bubbles


def zero_plans(run: Measured, world_size: int | None = None) -> tuple[int, dict[str, dict], list[dict]]:
    """Lesson 04: (ranks, {plan: row}, capped rows) of the committed zero run. The plans (DDP, ours, stages 1-3,
    FSDP) are those at world_size, by default the most ranks measured; the capped rows are the models the bench
    tried under one per-GPU memory cap (each row says whether it fit)."""
    timed = [r for r in run.rows if "tokens_per_s" in r and r.get("world_size")]
    if not timed:
        raise ValueError(f"{run.file}: the zero section has no timed plans (rows with tokens_per_s and world_size)")
    world = world_size or max(r["world_size"] for r in timed)
    plans = {r["plan"]: r for r in timed if r["world_size"] == world}
    if not plans:
        raise ValueError(f"{run.file}: the zero section measured no plan at world_size={world}; "
                         f"it has {sorted({r['world_size'] for r in timed})}")
    capped = [r for r in run.rows if "memory_cap_bytes" in r]        # one cap, at the fewest ranks the bench ran it on
    return world, plans, capped
