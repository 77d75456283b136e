import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from frugal import serialization
from frugal.model import TinyGPT, preset
from frugal.serialization import BatchSampler

CFG = preset("tiny", n_layer=1)


def _tokens():
    return torch.arange(1000) % 256


def _run(model, opt, sampler, steps):
    for _ in range(steps):
        x, y = sampler.next_batch()
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def _fresh(seed=0):
    torch.manual_seed(seed)
    model = TinyGPT(CFG)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3), BatchSampler(_tokens(), 4, 16, seed=1)


def test_round_trip_continues_exactly_like_an_uninterrupted_run(tmp_path):
    straight = _fresh()
    _run(*straight, steps=5)

    first = _fresh()
    _run(*first, steps=2)
    torch.manual_seed(123)                        # a generator state that must come back
    model, opt, sampler = first
    serialization.save(tmp_path / "run.pt", model, opt, step=2, sampler=sampler, extra={"note": "hi"})
    expected_draw = torch.rand(3)

    second = _fresh(seed=7)                      # different weights, sampler and generators: all overwritten
    blob = serialization.load(tmp_path / "run.pt", *second)
    assert blob["step"] == 2 and blob["extra"] == {"note": "hi"}
    assert torch.equal(torch.rand(3), expected_draw)
    assert second[2].batches_drawn == 2
    _run(*second, steps=3)
    # Same weights, Adam moments, batches and order of float operations: bitwise equal.
    for (name, a), b in zip(straight[0].state_dict().items(), second[0].state_dict().values()):
        assert torch.equal(a, b), name
    assert not list(tmp_path.glob("*.tmp")), "the temporary file is renamed into place"


def test_sampler_ranks_split_the_global_batch():
    whole = BatchSampler(_tokens(), 6, 8, seed=3)
    ranks = [BatchSampler(_tokens(), 6, 8, seed=3, rank=r, world_size=3) for r in range(3)]
    for _ in range(2):
        x, y = whole.next_batch()
        parts = [s.next_batch() for s in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert torch.equal(torch.cat([p[1] for p in parts]), y)


def test_sampler_state_resumes_the_batch_sequence():
    a = BatchSampler(_tokens(), 2, 8, seed=0)
    a.next_batch()
    state = a.state_dict()
    expected = a.next_batch()[0]
    b = BatchSampler(_tokens(), 2, 8, seed=99)
    b.load_state_dict(state)
    assert torch.equal(b.next_batch()[0], expected)


def test_world_size_not_dividing_the_batch_names_the_fix():
    with pytest.raises(ValueError, match="multiple of 4"):
        BatchSampler(_tokens(), 6, 8, world_size=4)


def test_resuming_with_another_batch_shape_is_refused():
    state = BatchSampler(_tokens(), 2, 8).state_dict()
    with pytest.raises(ValueError, match="same --batch-size"):
        BatchSampler(_tokens(), 4, 8).load_state_dict(state)


def test_missing_file_and_wrong_version_are_refused(tmp_path):
    model, opt, sampler = _fresh()
    with pytest.raises(FileNotFoundError, match="check the path"):
        serialization.load(tmp_path / "nothing.pt", model)
    torch.save({"version": 1}, tmp_path / "old.pt")             # the format before the checksummed header
    with pytest.raises(ValueError, match="not a frugal checkpoint"):
        serialization.load(tmp_path / "old.pt", model)
    serialization.save(tmp_path / "run.pt", model, opt)
    raw = (tmp_path / "run.pt").read_bytes().replace(b"frugal-run 2 ", b"frugal-run 9 ", 1)
    (tmp_path / "run.pt").write_bytes(raw)
    with pytest.raises(ValueError, match="format version 9"):
        serialization.load(tmp_path / "run.pt", model)


class _RunsAShellCommand:
    """What a hostile checkpoint carries: unpickling it would call os.system."""
    def __reduce__(self):
        import os
        return os.system, ("touch " + str(_RunsAShellCommand.marker),)


def test_a_checkpoint_carrying_code_is_refused_and_runs_nothing(tmp_path):
    import hashlib
    import io
    _RunsAShellCommand.marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"version": 2, "step": 0, "extra": _RunsAShellCommand()}, buf)
    payload = buf.getvalue()
    # A well-formed header with the right checksum: only weights_only stands between the file and the shell.
    header = b"frugal-run 2 " + hashlib.sha256(payload).hexdigest().encode() + b"\n"
    (tmp_path / "evil.pt").write_bytes(header + payload)
    model, opt, sampler = _fresh()
    with pytest.raises(ValueError, match="refuses to run code"):
        serialization.load(tmp_path / "evil.pt", model, opt, sampler)
    assert not _RunsAShellCommand.marker.exists()


@pytest.mark.parametrize("damage", ["empty", "truncated", "flipped"])
def test_a_damaged_checkpoint_is_refused_with_its_name(tmp_path, damage):
    model, opt, sampler = _fresh()
    path = tmp_path / "run.pt"
    serialization.save(path, model, opt, step=1, sampler=sampler)
    raw = path.read_bytes()
    if damage == "empty":
        raw = b""
    elif damage == "truncated":
        raw = raw[: len(raw) // 2]
    else:                                                   # one byte of tensor data changed on disk
        i = len(raw) - 200
        raw = raw[:i] + bytes([raw[i] ^ 0xFF]) + raw[i + 1:]
    path.write_bytes(raw)
    with pytest.raises(ValueError, match=f"{path.name} is (empty|damaged)"):
        serialization.load(path, model, opt, sampler)


def test_a_damaged_newest_checkpoint_resumes_from_the_previous_one(tmp_path):
    model, opt, sampler = _fresh()
    path = tmp_path / "run.pt"
    _run(model, opt, sampler, steps=1)
    serialization.save(path, model, opt, step=1, sampler=sampler)
    at_step_1 = {k: v.clone() for k, v in model.state_dict().items()}
    _run(model, opt, sampler, steps=1)
    serialization.save(path, model, opt, step=2, sampler=sampler)
    assert serialization.previous(path).exists()
    path.write_bytes(path.read_bytes()[:100])                 # the newest save is cut short
    fresh = _fresh(seed=3)
    with pytest.warns(UserWarning, match="previous checkpoint"):
        blob = serialization.load(path, *fresh)
    assert blob["step"] == 1
    assert all(torch.equal(v, at_step_1[k]) for k, v in fresh[0].state_dict().items())


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    import subprocess
    dead = subprocess.Popen(["true"])
    dead.wait()                                             # a pid that no longer runs
    stale = tmp_path / f".run.pt.{dead.pid}.abcd1234.tmp"
    stale.write_bytes(b"half a checkpoint")
    mine = tmp_path / f".run.pt.{__import__('os').getpid()}.ffff0000.tmp"
    mine.write_bytes(b"being written")
    model, opt, _ = _fresh()
    serialization.save(tmp_path / "run.pt", model, opt)
    assert not stale.exists() and mine.exists()


def _save_many(path, seed, n):
    torch.manual_seed(seed)
    model = TinyGPT(CFG)
    for step in range(n):
        serialization.save(path, model, step=step, extra={"writer": seed})


def test_two_writers_of_one_path_never_leave_a_broken_file(tmp_path):
    path = str(tmp_path / "run.pt")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_save_many, args=(path, seed, 6)) for seed in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    model = TinyGPT(CFG)
    blob = serialization.load(path, model)                 # whole, from one writer or the other
    assert blob["extra"]["writer"] in (1, 2) and blob["step"] == 5


def test_write_atomic_leaves_the_old_file_whole_when_the_write_fails(tmp_path, monkeypatch):
    import errno
    import os
    target = tmp_path / "results.json"
    target.write_text("old, whole")

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="disk full"):
        serialization.write_atomic(target, "new " * 1000)
    assert target.read_text() == "old, whole"
    assert not list(tmp_path.glob(".*.tmp"))


def test_an_unwritable_save_path_is_refused_before_training(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(PermissionError, match="not a writable folder"):
        serialization.check_writable(tmp_path / "file" / "run.pt")
    with pytest.raises(IsADirectoryError, match="name a file"):
        serialization.check_writable(tmp_path)


def _fsdp_rank(rank, world, store_file, out_file):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = TinyGPT(CFG)
        mesh = init_device_mesh("cpu", (world,))    # gloo ranks on the CPU, even where a GPU is visible
        for block in model.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        sampler = BatchSampler(_tokens(), 4, 16, seed=1, rank=rank, world_size=world)
        _run(model, opt, sampler, steps=3)
        serialization.save(out_file, model, opt, step=3, sampler=sampler)
        # The truth to compare with: every shard gathered by hand (DTensor.full_tensor is a collective).
        truth = {name: (p.full_tensor(), opt.state[p]["exp_avg"].full_tensor())
                 for name, p in model.named_parameters()}
        if rank == 0:
            torch.save(truth, out_file + ".truth")
        dist.barrier()      # both ranks done before either tears gloo down (a rank leaving early aborted it)
    finally:
        dist.destroy_process_group()


def test_fsdp_save_gathers_the_full_state_that_loads_into_a_plain_model(tmp_path):
    out = tmp_path / "fsdp.pt"
    mp.spawn(_fsdp_rank, args=(2, str(tmp_path / "store"), str(out)), nprocs=2)
    truth = torch.load(str(out) + ".truth", weights_only=False)
    model, opt, sampler = _fresh(seed=5)
    blob = serialization.load(out, model, opt, sampler)
    assert blob["step"] == 3 and sampler.batches_drawn == 3
    # Gathering copies shards, no arithmetic: the plain model holds exactly the sharded run's numbers.
    for name, p in model.named_parameters():
        weight, exp_avg = truth[name]
        assert torch.equal(p.detach(), weight), name
        assert torch.equal(opt.state[p]["exp_avg"], exp_avg), name
