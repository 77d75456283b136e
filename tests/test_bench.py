import gc
import json
import re
import shutil
from pathlib import Path

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from frugal import bench  # noqa: E402
from frugal.__main__ import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
NO_INTERPRETER = pytest.mark.skipif(
    torch.cuda.is_available(), reason="on CPU tensors the Triton kernels need Triton's interpreter, which is off where "
    "a GPU is; the GPU run is `python -m frugal bench --section NAME`")


def _quick(name, tmp_path):
    section = bench.run([name], tmp_path, quick=True, device="cpu")["sections"][name]
    for f in section["figures"]:
        assert (tmp_path / f).read_bytes()[:8] == PNG
    return section


def test_quick_baseline_writes_json_and_png(tmp_path, capsys):
    results = bench.run(["baseline"], tmp_path, quick=True, device="cpu")
    path = tmp_path / "cpu.json"
    assert json.loads(path.read_text()) == json.loads(json.dumps(results, default=str))
    section = results["sections"]["baseline"]
    (row,) = section["rows"]
    assert row["model"] == "tiny" and row["tokens_per_s"] > 0 and 0 < row["mfu"] <= 1
    assert row["act_error"] < 0.01                      # estimate vs count, as in test_measure
    for name in section["figures"]:
        assert (tmp_path / name).read_bytes()[:8] == PNG
    assert section["figures"] == ["cpu_baseline_activations.png"]
    assert "== baseline" in capsys.readouterr().out     # the printed table


def test_sections_leave_the_tf32_switches_as_they_found_them(tmp_path):
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        bench.run(["baseline"], tmp_path, quick=True, device="cpu")      # fp32 with TF32 off inside
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_quick_precision_times_every_setting(tmp_path):
    section = _quick("precision", tmp_path)
    runs = {r["setting"]: r for r in section["rows"] if r["setting"] != "ratios"}
    assert list(runs) == [label for label, _, _ in bench.precision.SETTINGS]
    assert all(r["step_ms"] > 0 and r["tokens_per_s"] > 0 for r in runs.values())
    (ratios,) = [r for r in section["rows"] if r["setting"] == "ratios"]
    assert ratios["bf16_speedup_over_fp32"] == pytest.approx(runs["fp32"]["step_ms"] / runs["bf16"]["step_ms"])
    assert section["figures"] == ["cpu_precision_step_time.png"]


def test_quick_checkpointing_saves_less_and_matches_torch(tmp_path):
    rows = _quick("checkpointing", tmp_path)["rows"]
    by = {(r["policy"], r["impl"]): r for r in rows if "label" not in r}
    none, full = by[("none", "-")], by[("full", "frugal")]
    assert full["saved_bytes"] < none["saved_bytes"]
    assert full["saved_bytes"] == by[("full", "torch")]["saved_bytes"]          # counted bytes: exact
    assert by[("sqrt", "frugal")]["saved_bytes"] == by[("sqrt", "torch")]["saved_bytes"]
    assert none["saved_bytes"] > by[("selective", "frugal")]["saved_bytes"] > full["saved_bytes"]
    assert any(r["policy"].startswith("first:") for r in rows)


@pytest.mark.slow
def test_quick_data_parallel_on_two_gloo_ranks(tmp_path):
    rows = _quick("data_parallel", tmp_path)["rows"]
    train = [r for r in rows if "flavour" in r]
    assert {(r["flavour"], r["world_size"]) for r in train} >= {("ddp", 2), ("naive", 2), ("bucket", 2), ("none", 1)}
    assert all(r["tokens_per_s"] > 0 for r in train)
    assert {r["algorithm"] for r in rows if "algorithm" in r} >= {"ring (ours)", "dist.all_reduce"}


@pytest.mark.slow
def test_quick_zero_runs_every_plan(tmp_path):
    rows = _quick("zero", tmp_path)["rows"]
    assert not [r for r in rows if "error" in r]
    by = {r["plan"]: r for r in rows}
    assert set(by) == {"DDP", "DP (ours)", "stage 1", "stage 2", "stage 3", "FSDP"}
    assert by["stage 3"]["state_bytes_counted"] < by["stage 1"]["state_bytes_counted"] < by["DDP"]["state_bytes_counted"]


@pytest.mark.slow
def test_quick_model_parallel_measures_the_bubble(tmp_path):
    rows = _quick("model_parallel", tmp_path)["rows"]
    pipe = {(r["schedule"], r["m"]): r for r in rows if r["part"] == "pipeline"}
    assert pipe[("gpipe", 4)]["stage0_in_flight"] == 4 and pipe[("1f1b", 4)]["stage0_in_flight"] == 2
    assert {r["ranks"] for r in rows if r["part"] == "tensor"} == {1, 2}


@pytest.mark.parametrize("gpus,zero,dp,stages,tensor", [
    (0, [2], [1, 2], [2], [1, 2]),             # CPU: 2 gloo ranks, as the quick tests above run
    (1, [2], [1], [2], [1, 2]),                # one GPU: the multi-rank sections fall back to gloo on CPU
    (2, [2], [1, 2], [2], [1, 2]),
    (3, [3], [1, 2, 3], [3], [1, 2]),          # tensor ranks are powers of two: they divide 16 heads
    (4, [4], [1, 2, 4], [4], [1, 4]),
    (6, [4, 6], [1, 2, 4, 6], [4, 6], [1, 4]),
    (8, [4, 8], [1, 2, 4, 8], [4, 8], [1, 4, 8]),
    (16, [4, 8], [1, 2, 4, 8, 16], [4, 8], [1, 4, 8]),
])
def test_each_multi_rank_section_measures_at_4_and_at_every_gpu_up_to_8(gpus, zero, dp, stages, tensor):
    from frugal.bench.data_parallel import data_parallel_worlds
    from frugal.bench.model_parallel import tensor_ranks
    from frugal.bench.runner import rank_counts     # zero's worlds and the pipeline's stage counts
    assert rank_counts(gpus) == zero
    assert data_parallel_worlds(gpus) == dp
    assert rank_counts(gpus) == stages
    assert tensor_ranks(gpus) == tensor


@pytest.mark.slow
def test_quick_zero_at_two_world_sizes_on_gloo(tmp_path, monkeypatch):
    """The loop an 8-GPU host runs (rank_counts: [4, 8]), here on 2 and 4 gloo ranks: rows, figures and
    peak_breakdown per world size, and a Speed table for each in the report."""
    monkeypatch.setattr(bench.zero, "rank_counts", lambda gpus: [2, 4])
    section = _quick("zero", tmp_path)
    rows = section["rows"]
    assert not [r for r in rows if "error" in r]
    plans = ("DDP", "DP (ours)", "stage 1", "stage 2", "stage 3", "FSDP")
    assert {(r["plan"], r["world_size"]) for r in rows} == {(p, n) for n in (2, 4) for p in plans}
    assert set(section["figures"]) == {f"cpu_zero_{f}_{n}ranks.png" for f in ("memory", "comm") for n in (2, 4)}
    assert set(section["peak_breakdown"]) == {"2", "4"}
    s3 = {r["world_size"]: r for r in rows if r["plan"] == "stage 3"}
    assert s3[4]["state_bytes_counted"] < s3[2]["state_bytes_counted"]          # a quarter against a half
    md = bench.markdown_report(tmp_path)
    assert "**Speed, tiny fp32, 2 ranks**" in md and "**Speed, tiny fp32, 4 ranks**" in md


@pytest.mark.slow
def test_quick_model_parallel_at_two_stage_counts_on_gloo(tmp_path, monkeypatch):
    """The loops an 8-GPU host runs (rank_counts: [4, 8], tensor_ranks: [1, 4, 8]), here at 2 and 4 stages
    and 1, 2 and 4 tensor ranks on gloo."""
    monkeypatch.setattr(bench.model_parallel, "rank_counts", lambda gpus: [2, 4])
    monkeypatch.setattr(bench.model_parallel, "tensor_ranks", lambda gpus: [1, 2, 4])
    section = _quick("model_parallel", tmp_path)
    rows = section["rows"]
    pipe = {(r["ranks"], r["schedule"], r["m"]): r for r in rows if r["part"] == "pipeline"}
    assert set(pipe) == {(p, s, m) for p in (2, 4) for s in ("gpipe", "1f1b") for m in (1, 2, 4)}
    assert pipe[(4, "gpipe", 4)]["stage0_in_flight"] == 4 and pipe[(4, "1f1b", 4)]["stage0_in_flight"] == 4
    assert pipe[(2, "1f1b", 4)]["stage0_in_flight"] == 2
    tensor = {r["ranks"]: r for r in rows if r["part"] == "tensor"}
    assert set(tensor) == {1, 2, 4} and tensor[4]["params_per_rank"] < tensor[2]["params_per_rank"]
    assert set(section["figures"]) == {f"cpu_model_parallel_{f}_{p}stages.png" for f in ("bubble", "gantt")
                                       for p in (2, 4)}
    md = bench.markdown_report(tmp_path)
    assert "**Pipeline, 2 stages (gloo)**" in md and "**Pipeline, 4 stages (gloo)**" in md


def test_report_writes_a_table_per_world_size_and_the_headline_of_the_largest(tmp_path):
    from frugal.bench.zero import headlines
    rows = [{"plan": plan, "world_size": n, "model": "gpt2-small", "dtype": "bf16", "tokens_per_s": 1e5 * n,
             "state_bytes_counted": state / n if plan == "stage 3" else state, "peak_over_predicted": 1.01}
            for n in (4, 8) for plan, state in (("DDP", 16e9), ("stage 3", 16e9))]
    rows += [{"plan": "cap 7.00 GiB: gpt2-medium zero3", "world_size": 4, "n_params": 3e8, "fits": True}]
    (tmp_path / "h200-x8.json").write_text(json.dumps(
        {"device": {"name": "H200"}, "sections": {"zero": {"rows": rows, "figures": []}}}))
    md = bench.markdown_report(tmp_path)
    assert "**Speed, gpt2-small bf16, 4 ranks**" in md and "**Speed, gpt2-small bf16, 8 ranks**" in md
    assert "**Memory per rank, gpt2-small bf16, 8 ranks**" in md and "Other rows" not in md
    speed8 = md.split("**Speed, gpt2-small bf16, 8 ranks**")[1].split("**")[0]
    assert "800,000" in speed8 and "400,000" not in speed8                    # only the 8-rank rows
    cap = _table_rows(md.split("**Under a per-GPU memory cap**")[1].split("**")[0])
    assert cap[0][:2] == ["plan", "ranks"] and cap[1][1] == "4"
    (what, measured), = headlines(rows)
    assert what.endswith("on 8 ranks") and measured.startswith("16.00 vs 2.00 GB")


@NO_INTERPRETER
def test_quick_kernels_measures_each_kernel(tmp_path):
    pytest.importorskip("triton")
    rows = _quick("kernels", tmp_path)["rows"]
    assert {r["part"] for r in rows} == {"vector add", "add+rmsnorm fwd+bwd", "linear cross-entropy fwd+bwd"}


def test_quick_recipe_search_finds_more_with_the_recipe(tmp_path):
    rows = {r["plan"]: r for r in _quick("recipe_search", tmp_path)["rows"]}
    naive, full = rows["naive fp32 Adam"], rows["full recipe"]
    assert full["largest_estimated_params"] >= naive["largest_estimated_params"]
    assert full["estimated_GB"] < naive["estimated_GB"]                # the same model in less memory
    assert rows["full recipe, ZeRO-3 over 8"]["largest_estimated_params"] > naive["largest_estimated_params"]


def test_a_later_run_merges_its_section_into_the_file(tmp_path, monkeypatch):
    (tmp_path / "cpu.json").write_text(json.dumps({"sections": {"baseline": {"rows": [{"mfu": 0.1}]}}}))
    monkeypatch.setitem(bench.SECTIONS, "dummy", lambda ctx: {"rows": [{"quick": ctx.quick}]})
    bench.run(["dummy"], tmp_path, quick=True, device="cpu")
    saved = json.loads((tmp_path / "cpu.json").read_text())
    assert set(saved["sections"]) == {"baseline", "dummy"}
    assert saved["sections"]["dummy"]["rows"] == [{"quick": True}]
    assert saved["sections"]["baseline"]["rows"] == [{"mfu": 0.1}]     # the earlier section is kept as it was
    assert saved["device"]["device"] == "cpu"


def test_a_section_starts_without_what_the_one_before_left_in_cycles(tmp_path, monkeypatch):
    import weakref

    class Node:
        pass
    left = []

    def first(ctx):
        a, b = Node(), Node()
        a.other, b.other = b, a                    # a cycle: only the garbage collector frees it
        left.append(weakref.ref(a))
        return {"rows": []}

    seen = []
    monkeypatch.setitem(bench.SECTIONS, "first", first)
    monkeypatch.setitem(bench.SECTIONS, "second", lambda ctx: seen.append(left[0]() is None) or {"rows": []})
    gc.disable()
    try:
        bench.run(["first", "second"], tmp_path, quick=True, device="cpu")
    finally:
        gc.enable()
    assert seen == [True]


def test_unknown_section_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="baseline"):
        bench.run(["nope"], tmp_path, quick=True, device="cpu")


def test_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(bench.SECTIONS, "dummy", lambda ctx: {"rows": [{"x": 1.5}]})
    assert main(["bench", "--quick", "--section", "dummy", "--out", str(tmp_path), "--device", "cpu"]) == 0
    assert (tmp_path / "cpu.json").exists()
    assert main(["info"]) == 0
    assert "torch_version" in capsys.readouterr().out


@pytest.mark.slow
@NO_INTERPRETER
def test_quick_recipe_sweeps_candidates_marks_one_best_and_checks_the_pair(tmp_path):
    out = bench.run(["recipe"], out_dir=tmp_path, quick=True, device="cpu")["sections"]["recipe"]
    runs = [r for r in out["rows"] if "mfu" in r]
    assert len(runs) >= 5 and sum(r["best"] for r in runs) == 1
    best = next(r for r in runs if r["best"])
    assert best["mfu"] == max(r["mfu"] for r in runs)
    pairs = {r["recipe"]: r for r in out["rows"] if r["recipe"].startswith("pair:")}
    full = pairs["pair: recompute full + fused CE B8 vs plain bf16 B8"]
    assert full["activation_bytes_less"] >= 0.70          # counted bytes: exact on CPU, timing is not claimed here
    assert out["figures"] == ["cpu_recipe_candidates.png"]


# ----------------------------------------------------------------------------- the report

def _table_rows(markdown: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines()
            if line.startswith("|") and not line.startswith("|---")]


def test_report_writes_every_committed_result_in_human_units(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(ROOT / "results", results, ignore=shutil.ignore_patterns("*.png", "README.md"))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{bench.README_START}\nold\n{bench.README_END}\n\nafter\n")
    assert bench.update_readme(readme, results)
    full = (results / "README.md").read_text()
    for path in results.glob("*.json"):
        data = json.loads(path.read_text())
        assert data["device"]["name"] in full
        for name in data["sections"]:
            assert f"### {name}" in full
    rows = _table_rows(full)
    assert rows and all(len(r) <= 10 for r in rows)                  # at most 10 columns a table
    assert not [c for r in rows for c in r if re.fullmatch(r"\d{7,}", c)]   # no raw byte counts
    assert "Other rows" not in full                                   # every committed row has its table
    text = readme.read_text()
    assert text.startswith("# x\n") and text.endswith("\n\nafter\n") and "old" not in text
    head = text.split(bench.README_START)[1].split(bench.README_END)[0]
    assert 4 <= len(_table_rows(head)) - 1 <= 12 and "(results/README.md)" in head
    assert not bench.update_readme(readme, results)                   # a second run changes nothing


def test_report_shows_rows_no_table_claims_and_refuses_a_readme_without_the_block(tmp_path):
    (tmp_path / "cpu.json").write_text(json.dumps(
        {"device": {"name": "CPU"}, "sections": {"dummy": {"rows": [{"mystery": 1.5}], "figures": []}}}))
    assert "**Other rows**" in bench.markdown_report(tmp_path) and "| 1.50 |" in bench.markdown_report(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text("# no block\n")
    with pytest.raises(ValueError, match="results block"):
        bench.update_readme(readme, tmp_path)


def test_committed_readmes_are_what_the_report_writes():
    """README.md's headline block and results/README.md come from results/*.json: run `python -m frugal report`."""
    assert (ROOT / "results" / "README.md").read_text() == bench.markdown_report(ROOT / "results")
    head = (ROOT / "README.md").read_text().split(bench.README_START)[1].split(bench.README_END)[0]
    assert head.strip() == bench.headline_report(ROOT / "results").strip()


def test_cross_entropy_figure_labels_are_short_and_leave_out_the_off_scale_bar():
    from frugal.bench.kernels import short_name
    assert short_name("chunked (ours), chunk=2048") == "ours chunked"
    assert short_name("chunked (ours), chunk=512") is None
    assert short_name("tiled (ours), Triton backward") is None
    assert short_name("Liger-Kernel 0.8.5") == "Liger-Kernel" and short_name("Cut Cross-Entropy 25.1.1") == "CCE"
    assert short_name("unfused head") == "eager"


def test_kernel_headlines_set_the_vector_add_rule_and_ours_against_each_rms_norm():
    from frugal.bench.kernels import headlines
    rows = [{"part": "vector add", "n": 2 ** 28, "impl": "ours, the rule", "config": "BLOCK=1024 warps=4 grid=blocks",
             "vs torch.add": 0.973, "GPU vs torch.add": 1.0}]
    rows += [{"part": "add+rmsnorm fwd+bwd", "shape": "8x16", "impl": impl, "fwd+bwd ms": ms, "GPU ms": gpu}
             for impl, ms, gpu in [("fused (ours)", 0.5, 0.07), ("eager chain", 0.6, 0.3),
                                   ("add + F.rms_norm", 0.2, 0.1)]]
    lines = dict(headlines(rows))
    assert lines["vector add of 2^28 floats, the rule (BLOCK=1024 warps=4 grid=blocks) vs torch.add"] == \
        "0.973x from idle, GPU 1.000x"
    assert lines["residual add + RMSNorm 8x16, fwd+bwd ms: ours vs add + F.rms_norm"] == \
        "0.500 (GPU 0.070) vs 0.200 (GPU 0.100)"


def test_quick_parity_has_the_rerun_row(tmp_path):
    rows = {r["technique"]: r for r in _quick("parity", tmp_path)["rows"]}
    assert set(rows) == {"fp32", "bf16", "recompute full", "fp32, again"}
    assert rows["fp32, again"]["kind"] == "noise" and rows["fp32, again"]["rel_diff"] == 0.0   # CPU: bit for bit
    assert rows["recompute full"]["within"] and rows["recompute full"]["seeds"] == 1
