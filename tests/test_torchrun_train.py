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


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_killed_run_resumes_to_exactly_the_uninterrupted_parameters(workdir, parallel):
    """DDP replicates, FSDP shards weights and Adam over the ranks: either way a killed run resumes bit for bit."""
    reference = workdir / "reference.pt"
    resumable = workdir / "resumable.pt"
    _run(["--save", str(reference), "--parallel", parallel])

    # The run to interrupt: killed with SIGKILL (no chance to clean up) once a save has landed.
    proc = subprocess.Popen(_torchrun(["--save", str(resumable), "--save-every", "5", "--parallel", parallel]),
                            stdout=subprocess.PIPE,
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

    out = _run(["--save", str(resumable), "--save-every", "5", "--resume", "--parallel", parallel])
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


ALONE = ["--model", "tiny", "--n-layer", "1", "--batch-size", "2", "--seq-len", "8", "--log-every", "2",
         "--peak-tflops", "0.1", "--device", "cpu"]


def test_resume_refuses_options_that_contradict_the_saved_run(tmp_path):
    path = str(tmp_path / "run.pt")
    done = torchrun_train.main(ALONE + ["--steps", "4", "--save", path])
    with pytest.raises(ValueError, match=r"--lr 0.01 \(saved: 0.0003\).*pass the saved values"):
        torchrun_train.main(ALONE + ["--steps", "8", "--save", path, "--resume", "--lr", "1e-2"])
    with pytest.raises(ValueError, match=r"already taken 4 steps.*--steps 5 or more"):
        torchrun_train.main(ALONE + ["--steps", "2", "--save", path, "--resume"])
    # asking for the steps already run trains nothing and reports the saved run's loss, not NaN
    again = torchrun_train.main(ALONE + ["--steps", "4", "--save", path, "--resume"])
    assert again["resumed_from"] == 4 and again["final_loss"] == done["final_loss"]
    # options that change no number may differ, and the file records what ran
    torchrun_train.main(ALONE + ["--steps", "6", "--save", path, "--resume", "--log-every", "3"])
    saved = serialization.read_verified(path)["extra"]["args"]
    assert saved["steps"] == 6 and saved["log_every"] == 3


def _rank_pids(marker: str, agent: int) -> list[int]:
    return [p for p in _pids_mentioning(marker) if p != agent]


def test_ranks_stop_when_their_torchrun_agent_is_killed(workdir):
    save = workdir / "long.pt"
    proc = subprocess.Popen(_torchrun(["--save", str(save), "--steps", "100000", "--log-every", "5"]),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(), cwd=REPO,
                            start_new_session=True)
    for line in proc.stdout:                       # training has started on both ranks
        if line.startswith("step"):
            break
    ranks = _rank_pids(str(workdir), proc.pid)
    assert len(ranks) >= 2, ranks
    os.kill(proc.pid, signal.SIGKILL)              # the agent gets no chance to stop its ranks
    proc.wait(timeout=10)
    deadline = time.monotonic() + 15
    while any(_alive(p) for p in ranks) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in ranks), "ranks outlived their agent"


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _listening_addresses(pids: list[int]) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp* writes them) of the TCP sockets these processes listen on."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            pass
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                found.add(fields[1].rsplit(":", 1)[0])
    return found


def test_torchrun_local_stores_listen_on_loopback_only(workdir):
    cmd = [sys.executable, "-m", "frugal.torchrun_local", "--standalone", "--nproc-per-node", "2",
           "-m", "frugal.torchrun_train", *TINY, "--steps", "100000", "--log-every", "5",
           "--save", str(workdir / "loop.pt")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(), cwd=REPO,
                            start_new_session=True)
    try:
        for line in proc.stdout:
            if line.startswith("step"):
                break
        addresses = _listening_addresses(_pids_mentioning(str(workdir)))
    finally:
        _kill_all(str(workdir))
        proc.wait(timeout=10)
    assert addresses, "the agent's stores were not found"
    assert addresses <= {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}, \
        f"a store listens beyond 127.0.0.1: {addresses}"


def test_torchrun_local_refuses_several_machines():
    from frugal import torchrun_local
    with pytest.raises(SystemExit, match="private network"):
        torchrun_local.check_single_machine(["--nnodes", "2", "--rdzv-endpoint", "10.0.0.1:29500", "x.py"])
    torchrun_local.check_single_machine(["--standalone", "--nproc-per-node", "2", "x.py"])
