"""frugal.results' readers turn a committed run into what a lesson's figure draws beside its live measurement."""
import json

import pytest

from frugal import results


def _run(tmp_path, section, rows, device=None):
    (tmp_path / "gpu.json").write_text(json.dumps({"device": device or {"catalog": "H200", "gpus": 1}, "sections": {
        section: {"when": "2026-12-02 04:43 UTC", "rows": rows}}}))
    return results.newest(section, tmp_path)


def test_checkpointing_curves_run_from_no_recompute_to_every_block_with_the_choices_apart(tmp_path):
    def row(policy, impl, saved, ms, **kw):
        return dict(policy=policy, impl=impl, saved_bytes=saved, step_s=ms / 1e3, **kw)

    run = _run(tmp_path, "checkpointing", [
        row("none", "-", 100, 90), row("full", "frugal", 40, 104), row("full", "torch", 40, 105),
        row("first:2", "frugal", 60, 98), row("first:1", "frugal", 80, 94), row("first:1", "torch", 80, 95),
        row("first:2", "torch", 60, 99), row("selective", "frugal", 70, 93),
        row("selective", "frugal", 72, 97, label="eager LN"), row("sqrt", "frugal", 55, 100)])
    got = results.checkpointing_curves(run)
    ours = got["series"]["ours"]
    assert [p["label"] for p in ours] == ["0", "1", "2", "3"]            # 3 blocks: first:1, first:2, then full
    assert [p["saved_bytes"] for p in ours] == [100, 80, 60, 40]
    assert [p["step_s"] for p in got["series"]["torch.utils.checkpoint"]][-1] == pytest.approx(0.105)
    assert [p["label"] for p in got["alternatives"]["ours, selective"]] == ["sel", "eager LN"]
    assert [p["label"] for p in got["alternatives"]["√n segments"]] == ["√n"]
    with pytest.raises(ValueError, match="policy='none'"):
        results.checkpointing_curves(_run(tmp_path, "checkpointing", [row("full", "frugal", 40, 104)]))


def test_data_parallel_steps_pair_two_ranks_with_one_gpu_alone(tmp_path):
    run = _run(tmp_path, "data_parallel", [
        dict(flavour="none", world_size=1, step_ms=27.0), dict(flavour="bucket", world_size=1, step_ms=27.3),
        dict(flavour="bucket", world_size=2, step_ms=28.7), dict(flavour="naive", world_size=2, step_ms=32.3),
        dict(algorithm="ring (ours)", world_size=2, time_ms=1.2)], device={"catalog": "H200", "gpus": 2})
    alone, steps = results.data_parallel_steps(run)
    assert alone == 27.0 and steps == {"bucket": 28.7, "naive": 32.3}
    assert run.label == "2× H200, 2026-12-02"
    with pytest.raises(ValueError, match="flavour='none'"):
        results.data_parallel_steps(_run(tmp_path, "data_parallel", [dict(flavour="naive", world_size=2)]))


def test_recipe_ranking_keeps_the_candidates_at_their_gpu_price_and_drops_the_pairs(tmp_path):
    run = _run(tmp_path, "recipe", [
        {"recipe": "plain", "tokens_per_s": 3e5, "peak_memory_bytes": 3.6e10, "usd_per_billion_tokens (H200)": 2.9},
        {"recipe": "pair: recipe vs plain", "activation_bytes_less": 0.9}])
    assert results.recipe_ranking(run) == {
        "plain": {"tokens_per_s": 3e5, "memory_bytes": 3.6e10, "dollars_per_billion_tokens": 2.9}}


def test_pipeline_bubbles_by_schedule_and_micro_batches(tmp_path):
    run = _run(tmp_path, "model_parallel", [
        dict(part="pipeline", ranks=2, schedule="gpipe", m=1, bubble_measured=0.504),
        dict(part="pipeline", ranks=2, schedule="gpipe", m=4, bubble_measured=0.221),
        dict(part="pipeline", ranks=2, schedule="1f1b", m=4, bubble_measured=0.216),
        dict(part="tensor", ranks=2, step_ms=18.0)])
    assert results.pipeline_bubbles(run) == (2, {"gpipe": {1: 0.504, 4: 0.221}, "1f1b": {4: 0.216}})
    with pytest.raises(ValueError, match="pipeline rows"):
        results.pipeline_bubbles(_run(tmp_path, "model_parallel", [dict(part="tensor", ranks=2)]))


def test_zero_plans_take_the_most_ranks_measured_and_keep_the_capped_models(tmp_path):
    def plan(name, world, tps):
        return dict(plan=name, world_size=world, tokens_per_s=tps, peak_bytes_measured=1.01e9, peak_bytes_predicted=1e9)

    run = _run(tmp_path, "zero", [
        plan("DDP", 4, 9e5), plan("stage 3", 4, 8e5), plan("DDP", 8, 1.7e6), plan("stage 3", 8, 1.6e6),
        dict(plan="cap 6.89 GiB: gpt2-medium zero3", world_size=4, memory_cap_bytes=7.4e9, fits=True),
        dict(plan="stage 2", world_size=8, error="CUDA out of memory")], device={"catalog": "H200", "gpus": 8})
    world, plans, capped = results.zero_plans(run)
    assert world == 8 and list(plans) == ["DDP", "stage 3"] and plans["DDP"]["tokens_per_s"] == 1.7e6
    assert [r["plan"] for r in capped] == ["cap 6.89 GiB: gpt2-medium zero3"]     # the cap ran at 4 ranks
    assert results.zero_plans(run, world_size=4)[1]["stage 3"]["tokens_per_s"] == 8e5
    with pytest.raises(ValueError, match="world_size=2.*\\[4, 8\\]"):
        results.zero_plans(run, world_size=2)
    with pytest.raises(ValueError, match="no timed plans"):
        results.zero_plans(_run(tmp_path, "zero", [dict(plan="stage 2", world_size=8, error="boom")]))


def test_the_repository_runs_the_lessons_read_are_there():
    """Lessons 02, 03, 04, 05 and 07 draw these committed runs beside their live ones."""
    curves = results.checkpointing_curves(results.newest("checkpointing"))
    assert len(curves["series"]["ours"]) > 2 and curves["alternatives"]["ours, selective"]
    alone, steps = results.data_parallel_steps(results.newest("data_parallel"))
    assert alone > 0 and {"naive", "bucket"} <= set(steps)
    assert "recompute full + fused CE B32" in results.recipe_ranking(results.newest("recipe"))
    stages, bubbles = results.pipeline_bubbles(results.newest("model_parallel"))
    assert stages >= 2 and {"gpipe", "1f1b"} <= set(bubbles)
    world, plans, _ = results.zero_plans(results.newest("zero"))      # lesson 04
    assert world >= 2 and {"DDP", "stage 1", "stage 3"} <= set(plans)


def test_every_lesson_cell_that_reads_a_committed_run_copes_without_one():
    """On Colab frugal comes as a wheel, without the repository's results/: newest() is None there, and a cell that
    reads a committed run must say so and go on (a lesson once opened results/h200.json by path and raised)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    checked = 0
    for path in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            source = "".join(cell["source"])
            if cell["cell_type"] != "code":
                continue
            assert not re.search(r"[\w.-]+\.json\b|json\.load", source), \
                f"{path.name} cell {i} reads a results file by path: use frugal.results.newest(section)"
            if "newest(" in source:
                checked += 1
                assert "is None" in source or "is not None" in source, \
                    f"{path.name} cell {i} reads newest() without a branch for no committed run (Colab)"
    assert checked >= 8
