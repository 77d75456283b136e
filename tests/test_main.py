import re

import pytest

from frugal.__main__ import main


def test_train_command_prints_validation_loss_as_it_goes(tmp_path, capsys, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(10):
        (src / f"m{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 30)
    (src / "data.bin").write_bytes(b"\0\1\2")                   # left out by the glob
    monkeypatch.setattr("frugal.data_sources.default_cache_dir", lambda: tmp_path / "cache")
    assert main(["train", "--data", str(src), "--glob", "**/*.py", "--preset", "tiny", "--steps", "6",
                 "--eval-every", "3", "--eval-batches", "2", "--seq-len", "32", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    steps = [int(s) for s in re.findall(r"step\s+(\d+)\s+val loss [\d.]+ nats/token", out)]
    assert steps == [0, 3, 6]
    assert re.search(r"final validation loss [\d.]+ nats/token \([\d.]+ bits/byte\) after 6 steps", out)
    assert list((tmp_path / "cache").glob("*.bin"))


def test_train_command_names_a_bad_source(capsys):
    with pytest.raises(SystemExit) as info:              # the command line says what to pass, no traceback
        main(["train", "--data", "/no/such/folder", "--steps", "2"])
    assert info.value.code == 2 and "pick 'corpus'" in capsys.readouterr().err
