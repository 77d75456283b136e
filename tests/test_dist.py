import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import dist_workers as w
from frugal import dist as dist_mod
from frugal.dist import RankError, RankTimeout, launch, pick_backend


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); read its state
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_launch_returns_each_ranks_result_in_rank_order():
    out = launch(w.rank_info, 3, "x", backend="gloo", timeout=30)
    assert [o["rank"] for o in out] == [0, 1, 2]
    assert all(o["world"] == 3 and o["sum"] == 6.0 and o["value"] == "x" for o in out)
    assert len({o["pid"] for o in out}) == 3          # three real processes
    assert all(not _alive(o["pid"]) for o in out)      # and all reaped


def test_failing_rank_surfaces_its_traceback_quickly():
    t0 = time.monotonic()
    with pytest.raises(RankError) as err:
        launch(w.raise_on_rank_one, 2, backend="gloo", timeout=30)
    assert "rank 1 of 2" in str(err.value) and "ZeroDivisionError: rank one broke on purpose" in str(err.value)
    assert time.monotonic() - t0 < 20


def test_hanging_rank_trips_the_collective_timeout_with_a_clear_message():
    t0 = time.monotonic()
    with pytest.raises(RankError, match="timeout=3"):
        launch(w.hang_on_rank_one, 2, backend="gloo", timeout=3)
    assert time.monotonic() - t0 < 30


def _children() -> list[int]:
    """Live (non-zombie) spawned ranks whose parent is this test process."""
    kids = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().split(")")[-1].split()
        except OSError:
            continue
        if d.isdigit() and int(fields[1]) == os.getpid() and fields[0] != "Z":
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if b"spawn_main" in f.read():      # a rank, not multiprocessing's resource tracker
                        kids.append(int(d))
            except OSError:
                pass
    return kids


def test_deadline_stops_ranks_that_never_finish(tmp_path):
    pid_file = str(tmp_path / "pid")
    before = set(_children())
    with pytest.raises(RankTimeout, match="deadline"):
        launch(w.sleep_forever, 2, pid_file, backend="gloo", timeout=30, deadline=4)
    # on a loaded machine a rank may not have reached its pid file in 4 s: check our children as well
    pids = [int(open(f"{pid_file}.{r}").read()) for r in range(2) if os.path.exists(f"{pid_file}.{r}")]
    assert not any(_alive(p) for p in pids)
    assert set(_children()) <= before


def test_interrupted_parent_leaves_no_children(tmp_path):
    """A KeyboardInterrupt (a notebook's stop button) in the parent terminates and reaps every rank."""
    pid_file = str(tmp_path / "pid")
    # Ctrl-C raises KeyboardInterrupt, as in a notebook kernel; set it explicitly because a child inherits an
    # ignored SIGINT from whatever started the test run (Python then installs no handler of its own)
    script = textwrap.dedent(f"""
        import signal; signal.signal(signal.SIGINT, signal.default_int_handler)
        import sys; sys.path.insert(0, {os.path.dirname(__file__)!r})
        import dist_workers as w
        from frugal.dist import launch
        try:
            launch(w.sleep_forever, 2, {pid_file!r}, backend="gloo", timeout=30)
        except KeyboardInterrupt:
            print("interrupted")
    """)
    out_file = tmp_path / "parent.out"  # a file, not a pipe: EOF on a pipe waits for every inheritor of it
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=open(out_file, "w"))
    try:
        deadline = time.monotonic() + 60
        while not all(os.path.exists(f"{pid_file}.{r}") for r in range(2)):
            assert time.monotonic() < deadline, "ranks did not start"
            time.sleep(0.2)
        time.sleep(0.3)
        pids = [int(open(f"{pid_file}.{r}").read()) for r in range(2)]
        parent.send_signal(signal.SIGINT)
        parent.wait(timeout=60)
        assert "interrupted" in out_file.read_text()
    finally:
        parent.kill()
    time.sleep(0.5)
    assert not any(_alive(p) for p in pids)


def test_killed_parent_leaves_no_orphans(tmp_path):
    """Even a SIGKILLed parent (a crashed kernel) leaves no rank behind: each rank watches its parent."""
    pid_file = str(tmp_path / "pid")
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {os.path.dirname(__file__)!r})
        import dist_workers as w
        from frugal.dist import launch
        launch(w.sleep_forever, 2, {pid_file!r}, backend="gloo", timeout=30)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    while not all(os.path.exists(f"{pid_file}.{r}") for r in range(2)):
        assert time.monotonic() < deadline, "ranks did not start"
        time.sleep(0.2)
    pids = [int(open(f"{pid_file}.{r}").read()) for r in range(2)]
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids)


def test_a_rank_that_leaves_silently_is_named_with_its_exit_code():
    """Rank 0's 'connection closed by peer' is an echo: the error names rank 1, which exited first."""
    with pytest.raises(RankError, match=r"rank 1 exited with code 3 without reporting") as info:
        launch(w.exit_on_rank_one, 2, backend="gloo", timeout=20)
    assert "rank 0 then failed" in str(info.value) or "printed nothing" in str(info.value)


def test_an_aborted_rank_brings_its_stderr_into_the_error():
    with pytest.raises(RankError, match="SIGABRT") as info:
        launch(w.abort_on_rank_one, 2, backend="gloo", timeout=20)
    assert "the gradient bucket layout differs between ranks" in str(info.value)


def test_launch_has_a_default_deadline():
    import inspect
    assert inspect.signature(launch).parameters["deadline"].default == dist_mod.DEFAULT_DEADLINE > 0


def test_lambdas_and_nested_functions_run_on_the_ranks():
    offset = 10                                    # a closure variable travels with the function

    def nested(rank, world, x):
        import torch
        import torch.distributed as dist
        t = torch.tensor([float(rank + x + offset)])
        dist.all_reduce(t)
        return t.item()
    assert launch(nested, 2, 1.0) == [23.0, 23.0]    # (0+1+10) + (1+1+10)
    assert launch(lambda rank, world: rank * world, 3) == [0, 3, 6]


def test_a_function_defined_in_main_runs_on_the_ranks(tmp_path):
    """What a notebook cell defines lives in __main__, which a spawned rank cannot import: it goes by value."""
    script = tmp_path / "cell.py"
    script.write_text(
        "from frugal.dist import launch\n"
        "SCALE = 3\n"
        "def worker(rank, world):\n"
        "    return rank * SCALE\n"
        "if __name__ == '__main__':\n"
        "    print(launch(worker, 2))\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[0, 3]"


def test_arguments_that_cannot_travel_name_the_fix():
    import threading
    with pytest.raises(ValueError, match="open files, sockets or locks inside the function"):
        launch(lambda rank, world, lock: rank, 2, threading.Lock())


def test_nccl_without_enough_gpus_names_the_fix():
    import torch
    if torch.cuda.device_count() >= 64:
        pytest.skip("this machine has 64 GPUs")
    with pytest.raises(ValueError, match="gloo"):
        pick_backend(64, "nccl")


def test_bad_world_size():
    with pytest.raises(ValueError, match="world_size"):
        launch(w.rank_info, 0, "x")


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp* writes them) listening on `port`."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in open(table).read().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.rsplit(":", 1)
            if state == "0A" and int(p, 16) == port:
                found.append(addr)
    return found


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads Linux's /proc/net/tcp")
def test_the_launch_store_listens_on_loopback_only():
    store = dist_mod.loopback_store(2, timeout=5)
    assert _listening(store.port) == ["0100007F"], "127.0.0.1, and no other interface"
    port = store.port
    del store
    assert _listening(port) == [], "the store closes its socket when it goes"


def test_ranks_report_progress_to_the_caller_as_it_happens():
    def work(rank, world, n):
        from frugal.dist import report
        for i in range(n):
            report(("step", i))
        return rank

    heard = []
    assert launch(work, 2, 3, on_report=lambda rank, msg: heard.append((rank, msg))) == [0, 1]
    for rank in (0, 1):
        mine = [m for r, m in heard if r == rank]
        assert mine == ["joined", ("step", 0), ("step", 1), ("step", 2), "done"]   # in order, then done


def test_report_outside_launch_does_nothing_and_on_report_must_be_callable():
    dist_mod.report("nobody listens")                  # the parent has no queue: no error, no output
    with pytest.raises(TypeError, match="on_report"):
        launch(w.rank_info, 1, "x", on_report="print")
