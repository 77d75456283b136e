import gc
import json

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from frugal import bench  # noqa: E402
from frugal.__main__ import main  # noqa: E402


def test_quick_baseline_writes_json_and_png(tmp_path, capsys):
    results = bench.run(["baseline"], tmp_path, quick=True, device="cpu")
    path = tmp_path / "cpu.json"
    assert json.loads(path.read_text()) == json.loads(json.dumps(results, default=str))
    section = results["sections"]["baseline"]
    (row,) = section["rows"]
    assert row["model"] == "tiny" and row["tokens_per_s"] > 0 and 0 < row["mfu"] <= 1
    assert row["act_error"] < 0.01                      # estimate vs count, as in test_measure
    for name in section["figures"]:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert section["figures"] == ["cpu_baseline_activations.png"]
    assert "== baseline" in capsys.readouterr().out     # the printed table


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
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU sweep's fused-head candidates need Triton's "
                    "interpreter, off where a GPU is; the GPU sweep is `python -m frugal bench --section recipe`")
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
