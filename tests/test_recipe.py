from dataclasses import asdict, replace
from functools import partial

import pytest
import torch
from torch.utils.checkpoint import checkpoint as torch_checkpoint

from frugal import plots, recipe, train
from frugal.measure import count_saved_tensors
from frugal.model import TinyGPT, preset
from frugal.recipe import naive_plan, recipe_plan
from frugal.recompute import Recompute
from frugal.train import TrainConfig

T4 = 16e9
SMALL = recipe.size_family(vocab_size=256, block_size=64)[:5]


def test_count_params_matches_the_model():
    for cfg in recipe.size_family()[:8] + [preset("tiny"), preset("gpt2-small", bias=False)]:
        with torch.device("meta"):
            assert recipe.count_params(cfg) == TinyGPT(cfg).num_params(), cfg


def test_family_grows():
    sizes = [recipe.count_params(c) for c in recipe.size_family()]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    assert sizes[0] < 1e7 and sizes[-1] > 5e9


def test_zero3_divides_the_states_by_the_world_size():
    cfg = recipe.size_family()[6]
    one = recipe.estimate_training_bytes(cfg, recipe_plan(1), 8, 1024)
    eight = recipe.estimate_training_bytes(cfg, recipe_plan(8), 8, 1024)
    for kind in ("weights", "gradients", "optimizer"):
        assert eight[kind] == pytest.approx(one[kind] / 8)


def test_search_frontier_is_the_last_size_under_the_budget():
    result = recipe.largest_that_fits(T4, naive_plan(), batch=8, seq=1024)
    flags = [r.fits_estimate for r in result.rows]
    k = flags.index(False)
    assert all(flags[:k]) and not any(flags[k:])        # fits, then never again: sizes only grow
    assert result.largest_estimated is result.rows[k - 1]
    assert result.largest_verified is None              # nothing was trained


def test_recipe_trains_a_model_at_least_4x_larger_under_a_t4_budget():
    """The lesson's claim, by the estimator, at a per-GPU batch of 8 sequences of 1024 tokens."""
    naive = recipe.largest_that_fits(T4, naive_plan(), batch=8, seq=1024).largest_estimated
    ours = recipe.largest_that_fits(T4, recipe_plan(1), batch=8, seq=1024).largest_estimated
    sharded = recipe.largest_that_fits(T4, recipe_plan(8), batch=8, seq=1024).largest_estimated
    assert ours.params >= 4 * naive.params
    assert sharded.params > ours.params


def test_counted_bytes_match_the_estimate_for_naive_fp32():
    """fp32 without recompute: the count (states + saved tensors) equals the estimate's persistent part.

    Within 0.1%: Adam's per-tensor 'step' counters and LayerNorm statistics the estimator rounds differently.
    """
    cfg = SMALL[2]
    est = recipe.estimate_training_bytes(cfg, naive_plan(), 4, 64)
    counted = recipe.counted_training_bytes(cfg, naive_plan(), 4, 64)
    persistent = est["weights"] + est["gradients"] + est["optimizer"] + est["activations"]
    assert counted == pytest.approx(persistent, rel=1e-3)


def test_counted_bytes_of_the_recipe_stay_under_its_estimate_and_under_naive():
    """The count misses what full recompute holds outside autograd's saved tensors, so it is a lower bound."""
    cfg = SMALL[3]
    est = recipe.estimate_training_bytes(cfg, recipe_plan(), 4, 64)
    counted = recipe.counted_training_bytes(cfg, recipe_plan(), 4, 64)
    assert counted <= est["weights"] + est["gradients"] + est["optimizer"] + est["activations"]
    assert counted < recipe.counted_training_bytes(cfg, naive_plan(), 4, 64)


def _fake_verify(limit):
    calls = []

    def verify(cfg):
        calls.append(cfg.n_embd)
        n = recipe.count_params(cfg)
        return n <= limit, n
    return verify, calls


@pytest.mark.parametrize("true_limit_index", [1, 3, 5])
def test_verification_walks_to_the_real_frontier(true_limit_index):
    """Whether the estimator over- or under-shoots, the walk ends at the largest size that really trains."""
    family = recipe.size_family(256, 64)[:7]
    limit = recipe.count_params(family[true_limit_index])
    budget = sum(recipe.estimate_training_bytes(family[3], naive_plan(), 4, 64).values())   # estimator picks 3
    verify, calls = _fake_verify(limit)
    result = recipe.largest_that_fits(budget, naive_plan(), 4, 64, family=family, verify=verify)
    assert result.largest_estimated.n_embd == family[3].n_embd
    assert result.largest_verified.n_embd == family[true_limit_index].n_embd
    assert calls[0] == family[3].n_embd                  # starts where the estimator points
    assert len(calls) <= abs(true_limit_index - 3) + 2    # and stops once it crossed the frontier


def test_cpu_verifier_counts_bytes():
    budget = recipe.estimate_training_bytes(SMALL[1], naive_plan(), 4, 64)
    budget = sum(budget.values())
    result = recipe.largest_that_fits(budget, naive_plan(), 4, 64, family=SMALL,
                                      verify=recipe.verifier(naive_plan(), 4, 64, budget, "cpu"))
    assert result.largest_verified.n_embd == SMALL[1].n_embd
    assert result.rows[2].verified is False and result.rows[2].measured_bytes > budget


def test_a_real_step_cannot_check_a_sharded_plan():
    with pytest.raises(ValueError, match="world_size=1"):
        recipe.counted_training_bytes(SMALL[0], recipe_plan(4), 2, 16)


def test_plans_are_train_configs_with_a_per_gpu_batch():
    assert naive_plan() == TrainConfig(precision="fp32", recompute="none", world_size=1)
    for w in (1, 3, 8):
        plan = recipe_plan(w)
        assert (plan.precision, plan.recompute, plan.data_parallel, plan.world_size) == ("bf16", "full", "zero3", w)
        assert plan.batch_size // plan.world_size == 8              # the search's default batch per GPU
    assert list(recipe.named_plans(8)) == ["naive fp32 Adam", "full recipe", "full recipe, ZeRO-3 over 8"]


@pytest.mark.parametrize("kwargs,match", [({"precision": "fp8"}, "bf16"), ({"recompute": "some"}, "full"),
                                          ({"data_parallel": "zero4"}, "zero3"), ({"world_size": 0}, "positive"),
                                          ({"precision": "fp16"}, "loss scaler")])
def test_bad_plans_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        replace(recipe_plan(), **kwargs)


def test_the_search_refuses_a_recompute_it_does_not_price():
    with pytest.raises(ValueError, match="estimate_recipe"):
        recipe.estimate_training_bytes(SMALL[0], replace(recipe_plan(), recompute="selective"), 4, 64)


def test_fused_cross_entropy_drops_the_logits_from_the_estimate():
    cfg = SMALL[2]
    plain = recipe.estimate_training_bytes(cfg, recipe_plan(), 4, 64)
    fused = recipe.estimate_training_bytes(cfg, replace(recipe_plan(), fused_cross_entropy=True), 4, 64)
    assert plain["activations"] - fused["activations"] == 4 * 64 * cfg.vocab_size * 4     # the fp32 logits
    assert fused["working"] == 0 and plain["working"] == 2 * 4 * 64 * cfg.vocab_size * 4


def test_the_recipe_recomputes_with_frugal_and_saves_what_torch_checkpoint_saves():
    """The real step is train.build's: frugal.recompute's 'full', which keeps what torch.utils.checkpoint keeps."""
    cfg = SMALL[3]
    step = recipe._one_device(recipe_plan(), 4, 64, torch.device("cpu"))
    model, _, next_batch, device = train.build(cfg, step)
    assert isinstance(model.recompute, Recompute) and model.recompute.policy == "full"
    x, y = next_batch()

    def saved_bytes():
        with train.autocast(step, device), count_saved_tensors(exclude=list(model.parameters())) as saved:
            model(x, y)
        return saved.nbytes
    ours = saved_bytes()
    model.recompute = None                                            # the reference: torch's checkpoint per block
    for block in model.blocks:
        block.forward = partial(torch_checkpoint, block.forward, use_reentrant=False)
    assert ours == saved_bytes()


def test_bad_budget_is_refused():
    with pytest.raises(ValueError, match="16e9"):
        recipe.largest_that_fits(0, naive_plan())


def test_frontier_plot():
    plans = {"naive fp32 Adam": naive_plan(), "full recipe": recipe_plan()}
    curves = {name: [asdict(row) for row in recipe.largest_that_fits(T4, p, 8, 1024).rows]
              for name, p in plans.items()}
    curves["naive fp32 Adam"][5]["verified"] = True
    fig = plots.model_size_frontiers(curves, T4)
    assert len(fig.axes[0].lines) == 2 + 2 + 1 + 1      # two curves, two stars, one verified square, the budget


@pytest.mark.gpu
def test_gpu_step_under_a_memory_cap():
    cfg = recipe.size_family(256, 64)[3]
    fits, peak = recipe.train_step_fits_gpu(cfg, naive_plan(), 4, 64, 2e9)
    assert fits and 0 < peak <= 2e9
    fits, peak = recipe.train_step_fits_gpu(cfg, naive_plan(), 4, 64, 1e6)
    assert not fits and peak is None


# ----------------------------------------------------------------------------- the learner's plan (lesson 07)

def _cfg(**kw):
    return TrainConfig(**{**dict(steps=4, batch_size=4, seq_len=32, progress=False, data="synthetic"), **kw})


def test_estimate_recipe_shrinks_memory_and_prices_recompute():
    g = preset("gpt2-small")
    plain = recipe.estimate_recipe(g, _cfg(batch_size=32, seq_len=1024, precision="bf16"), "H100")
    ours = recipe.estimate_recipe(g, _cfg(batch_size=32, seq_len=1024, precision="bf16", recompute="full",
                                          fused_cross_entropy=True), "H100")
    assert ours["activation_bytes"] < 0.1 * plain["activation_bytes"]
    assert ours["recompute_flops_per_token"] == 2 * 12 * 768 ** 2 * 12       # one more forward of every block
    assert ours["tokens_per_s"] < plain["tokens_per_s"]
    assert ours["dollars_per_billion_tokens"] > plain["dollars_per_billion_tokens"]
    # at MFU 0.4 on an H100 in bf16: tokens/s = 989.4e12 * 0.4 / (6N + 12·L·d·T)
    assert plain["tokens_per_s"] == pytest.approx(989.4e12 * 0.4 / plain["flops_per_token"])


def test_estimate_recipe_shards_states_under_zero_only_with_ranks():
    m = preset("tiny")
    one = recipe.estimate_recipe(m, _cfg(precision="bf16", data_parallel="zero3"), "H100")
    four = recipe.estimate_recipe(m, _cfg(precision="bf16", data_parallel="zero3", world_size=4), "H100")
    assert four["bytes"]["optimizer"] == pytest.approx(one["bytes"]["optimizer"] / 4 * 12 / 8)  # mixed: 12 B/param
    assert four["tokens_per_s"] == pytest.approx(4 * one["tokens_per_s"])    # communication is not modelled


def test_estimate_recipe_prices_bf16_on_a_t4_at_its_fp16_peak():
    out = recipe.estimate_recipe(preset("tiny"), _cfg(precision="bf16"), "T4")
    assert out["peak_dtype"] == "fp16"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path (counted bytes, a CPU peak carried to a T4); on "
                    "a GPU measure_recipe reports peak CUDA memory, run by `python -m frugal bench --section recipe`")
def test_measure_recipe_counts_what_recompute_and_fused_ce_save():
    m = preset("tiny")
    plain = recipe.measure_recipe(m, _cfg(precision="bf16"), "T4", cpu_peak_flops=1e10)
    ours = recipe.measure_recipe(m, _cfg(precision="bf16", recompute="full", fused_cross_entropy=True), "T4",
                                 cpu_peak_flops=1e10)
    assert ours["memory_kind"] == plain["memory_kind"] == "saved activations (counted)"
    assert ours["memory_bytes"] < 0.5 * plain["memory_bytes"]
    pred = recipe.estimate_recipe(m, _cfg(precision="bf16", recompute="full", fused_cross_entropy=True), "T4")
    # the count includes the token ids and LayerNorm statistics at fp32 that the 16-bit estimate halves: within 3x
    assert pred["activation_bytes"] / 3 <= ours["memory_bytes"] <= 3 * pred["activation_bytes"]
    for r in (plain, ours):
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * r["flops_per_token"] / 1e10)
        # the MFU measured here, carried to a T4's fp16 peak, priced at its catalog rate
        t4 = r["mfu"] * 65e12 / r["flops_per_token"]
        assert r["dollars_per_billion_tokens"] == pytest.approx(0.35 / 3600 / t4 * 1e9)


def test_recipe_runs_plot():
    runs = {"a": {"tokens_per_s": 1.0, "memory_bytes": 2 ** 20, "dollars_per_billion_tokens": 3.0,
                  "predicted_memory_bytes": 2 ** 21, "predicted_dollars_per_billion_tokens": 1.0},
            "b": {"tokens_per_s": 2.0, "memory_bytes": 2 ** 19, "dollars_per_billion_tokens": 1.5}}
    fig = plots.recipe_runs(runs)
    assert len(fig.axes) == 3
    assert len(fig.axes[1].lines) == 1 and list(fig.axes[1].lines[0].get_ydata()) == [2.0]   # one estimate, MiB
