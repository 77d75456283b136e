"""frugal.torchrun_train under real torchrun: 2 gloo ranks on CPU, killed mid-run, resumed, compared."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from frugal import serialization, torchrun_train

REPO = Path(__file__).resolve().parents[1]
STEPS = 60
TINY = ["--device", "cpu", "--model", "tiny", "--n-layer", "1", "--batch-size", "4", "--seq-len", "16",
        "--steps", str(STEPS), "--log-every", "10", "--peak-tflops", "0.1", "--lr", "1e-3"]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds its processes through /proc")


def _torchrun(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "frugal.torchrun_train", *TINY, *args]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _pids_mentioning(marker: str) -> list[int]:
    """Processes whose command line contains `marker` (a path unique to this test): torchrun and its ranks.

    torchrun starts each rank in a session of its own, so killing torchrun's process group would miss them.
    """
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def _kill_all(marker: str) -> None:
    for pid in _pids_mentioning(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def workdir(tmp_path):
    """A folder unique to the test; every process mentioning it is killed afterwards, pass or fail."""
    yield tmp_path
    _kill_all(str(tmp_path))
    deadline = time.monotonic() + 10
    while _pids_mentioning(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.1)


def _run(args: list[str], timeout: float = 60) -> str:
    out = subprocess.run(_torchrun(args), capture_output=True, text=True, timeout=timeout, env=_env(), cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_killed_run_resumes_to_exactly_the_uninterrupted_parameters(workdir):
    reference = workdir / "reference.pt"
    resumable = workdir / "resumable.pt"
    _run(["--save", str(reference)])

    # The run to interrupt: killed with SIGKILL (no chance to clean up) once a save has landed.
    proc = subprocess.Popen(_torchrun(["--save", str(resumable), "--save-every", "5"]), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=_env(), cwd=REPO, start_new_session=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("saved step 10 to"):
                _kill_all(str(workdir))
                break
        proc.wait(timeout=20)
    finally:
        _kill_all(str(workdir))
    log = "".join(lines)
    assert "saved step 10" in log, log
    assert "summary" not in log, "the run finished before it was killed: raise STEPS"
    killed_at = serialization.read_verified(resumable)["step"]
    assert 10 <= killed_at < STEPS

    out = _run(["--save", str(resumable), "--save-every", "5", "--resume"])
    assert f"resumed from {resumable} after step {killed_at}" in out

    # Same data, same order of float operations, state restored bit for bit: exactly equal, no tolerance.
    a = serialization.read_verified(reference)
    b = serialization.read_verified(resumable)
    assert a["step"] == b["step"] == STEPS
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for pid, state in a["optimizer"]["state"].items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(state[key], b["optimizer"]["state"][pid][key]), (pid, key)
    assert a["sampler"]["batches_drawn"] == b["sampler"]["batches_drawn"] == STEPS


def test_world_size_that_does_not_divide_the_batch_is_refused_with_the_fix():
    args = torchrun_train.parser().parse_args(["--batch-size", "6"])
    args.seq_len = 16
    with pytest.raises(ValueError, match="multiple of 4"):
        torchrun_train.check_args(args, world_size=4, block_size=64)


def test_sequence_longer_than_the_model_is_refused():
    args = torchrun_train.parser().parse_args(["--seq-len", "128"])
    with pytest.raises(ValueError, match="lower --seq-len"):
        torchrun_train.check_args(args, world_size=1, block_size=64)


def test_single_process_run_saves_and_resumes_without_torchrun(tmp_path):
    """Run alone (no torchrun): 6 steps, then resume to 10, equals 10 straight."""
    common = ["--model", "tiny", "--n-layer", "1", "--batch-size", "2", "--seq-len", "8", "--log-every", "2",
              "--peak-tflops", "0.1", "--device", "cpu"]
    torchrun_train.main(common + ["--steps", "10", "--save", str(tmp_path / "a.pt")])
    torchrun_train.main(common + ["--steps", "6", "--save", str(tmp_path / "b.pt")])
    summary = torchrun_train.main(common + ["--steps", "10", "--save", str(tmp_path / "b.pt"), "--resume"])
    assert summary["resumed_from"] == 6
    a, b = (serialization.read_verified(tmp_path / f)["model"] for f in ("a.pt", "b.pt"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_recompute_takes_trainconfigs_policies_and_changes_no_number(tmp_path):
    """--recompute is frugal.recompute (TrainConfig.recompute's names): recomputed blocks give the same weights."""
    for spec in ("none", "full", "every:2", "first:1", "selective", "sqrt"):
        assert torchrun_train.parser().parse_args(["--recompute", spec]).recompute == spec
    with pytest.raises(SystemExit):
        torchrun_train.parser().parse_args(["--recompute", "all"])
    common = ["--model", "tiny", "--n-layer", "2", "--batch-size", "2", "--seq-len", "8", "--steps", "3",
              "--log-every", "3", "--peak-tflops", "0.1", "--device", "cpu"]
    for spec in ("none", "full"):
        torchrun_train.main(common + ["--recompute", spec, "--save", str(tmp_path / f"{spec}.pt")])
    a, b = (serialization.read_verified(tmp_path / f"{spec}.pt")["model"] for spec in ("none", "full"))
    assert all(torch.equal(a[k], b[k]) for k in a)
