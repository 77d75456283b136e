"""frugal.results reads the committed GPU runs; frugal.claims turns them into verdicts computed from the numbers."""
import json

import pytest

from frugal import claims, results


def _write(folder, name, device, sections):
    (folder / f"{name}.json").write_text(json.dumps({"device": device, "sections": sections}))


@pytest.fixture
def fake(tmp_path):
    _write(tmp_path, "old", {"catalog": "H100", "gpus": 1}, {
        "precision": {"when": "2026-01-01 10:00 UTC", "rows": [
            {"setting": "fp32", "model": "m", "step_ms": 100.0}, {"setting": "bf16", "model": "m", "step_ms": 50.0}]}})
    _write(tmp_path, "new", {"catalog": "H200", "gpus": 2}, {
        "precision": {"when": "2026-02-01 10:00 UTC", "rows": [
            {"setting": "fp32", "model": "m", "step_ms": 120.0}, {"setting": "tf32", "model": "m", "step_ms": 40.0},
            {"setting": "bf16", "model": "m", "step_ms": 20.0}]},
        "checkpointing": {"when": "2026-02-01 10:00 UTC", "rows": [
            {"policy": "none", "impl": "-", "saved_bytes": 100.0, "step_s": 1.0},
            {"policy": "full", "impl": "frugal", "saved_bytes": 25.0, "step_s": 1.2}]}})
    (tmp_path / "broken.json").write_text("{not json")
    return tmp_path


def test_newest_picks_the_latest_run_and_labels_its_device_and_date(fake):
    run = results.newest("precision", fake)
    assert (run.device, run.label, run.file) == ("2× H200", "2× H200, 2026-02-01", "new.json")
    assert [m.file for m in results.measured("precision", fake)] == ["new.json", "old.json"]
    assert run.row(setting="tf32")["step_ms"] == 40.0 and run.row(setting="fp8") is None
    assert results.newest("no such section", fake) is None
    assert results.newest("precision", fake / "missing") is None      # a wheel without the repository


def test_verdicts_follow_the_numbers(fake):
    rows = claims.table("01_mixed_precision", fake, fp32_ms=10.0, bf16_ms=20.0)
    gpu, live = rows
    assert "6.0x faster than fp32" in gpu["measured"] and "2.0x against tf32" in gpu["measured"]
    assert gpu["verdict"] == "holds" and gpu["where"] == "2× H200, 2026-02-01"
    assert live["where"] == "this machine" and live["verdict"] == "does not hold here"   # 0.5x of 6x
    memory, time = claims.table("02_activation_checkpointing", fake)
    assert "75% less" in memory["measured"] and memory["verdict"] == "holds"           # 75% >= 0.85 * 70%
    assert "+20%" in time["measured"] and time["verdict"] == "holds"                    # inside 15-25%


def test_a_claim_without_a_committed_run_says_so(tmp_path):
    rows = claims.table("06_triton_kernels", tmp_path)
    assert rows[0]["verdict"] == "not measured here"


def test_counted_claims_need_no_gpu(tmp_path):
    (row,) = claims.table("00_gpu_economics", tmp_path)
    assert "8.4e+23" in row["measured"] and row["verdict"] == "close"          # 6ND + attention = 0.91e24


def test_the_verdict_rules():
    f = claims._finding
    assert f("x", "", 5.2, 6, "up to")["verdict"] == "holds"
    assert f("x", "", 3.0, 6, "up to")["verdict"] == "partly"
    assert f("x", "", 1.0, 6, "up to")["verdict"] == "does not hold here"
    assert f("x", "", 0.3, (0.15, 0.25), "range")["verdict"] == "outside the range"
    assert f("x", "", None, 6, "up to")["verdict"] == "not measured here"


def test_every_lesson_claim_renders_and_an_unknown_lesson_names_the_choices():
    text = claims.markdown(claims.table())
    assert text.count("\n") >= len(claims.CLAIMS) + 1
    with pytest.raises(ValueError, match="claims belong to"):
        claims.table("99_nope")
