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
    torch.save({"version": 0}, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="format version"):
        serialization.load(tmp_path / "old.pt", model)


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
