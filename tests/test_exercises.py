"""frugal.exercises: every reference solution passes its check, typical wrong answers fail saying what differs,
a stub reports "not done yet", and each solution's source pasted into a notebook cell defines the function."""
import inspect
import linecache

import pytest
import torch

import exercise_wrong as wrong
from frugal import exercises
from frugal.device import has_triton

# The parameters the learner's function takes, per exercise (the lessons' stubs have exactly these).
PARAMS = {
    "training_flops": ["n_params", "n_tokens"],
    "mixed_adam_state_bytes": ["n_params"],
    "round_to_bf16": ["x"],
    "loss_scaler_update": ["scale", "growth_tracker", "found_inf", "growth_factor", "backoff_factor",
                           "growth_interval"],
    "fp8_scale": ["x", "dtype"],
    "fp8_saturating_cast": ["x", "scale", "dtype"],
    "checkpoint": ["fn", "args"],
    "ring_all_reduce": ["tensor"],
    "bucket_assignment": ["param_bytes", "cap_bytes"],
    "zero_shard_bounds": ["numel", "world_size", "rank"],
    "schedule_1f1b": ["n_stages", "n_micro", "stage"],
    "vector_add_kernel": ["x_ptr", "y_ptr", "out_ptr", "n_elements", "BLOCK_SIZE"],
    "cross_entropy_backward": ["logits", "targets"],
    "plan_for_budget": ["memory_bytes", "model_cfg", "batch", "seq"],
}

# (exercise, wrong answer, a phrase its message must contain)
WRONG = [
    ("training_flops", wrong.flops_forward_only, "only the forward pass"),
    ("training_flops", wrong.flops_per_token, "differs from the 6·N·D rule"),
    ("training_flops", wrong.flops_returns_string, "not a number"),
    ("mixed_adam_state_bytes", wrong.bytes_fp32_only, "add the 16-bit weights and gradients"),
    ("mixed_adam_state_bytes", wrong.bytes_adam_only, "Adam's two moments alone"),
    ("mixed_adam_state_bytes", wrong.bytes_fp32_gradients, "20 per parameter"),
    ("round_to_bf16", wrong.bf16_truncate, "truncation"),
    ("round_to_bf16", wrong.bf16_half_up, "on ties"),
    ("round_to_bf16", wrong.bf16_nan_lost, "on NaN"),
    ("round_to_bf16", wrong.bf16_by_torch, "it made a bfloat16 tensor"),
    ("loss_scaler_update", wrong.scaler_late_growth, "growth_interval-th clean step"),
    ("loss_scaler_update", wrong.scaler_keeps_tracker, "the tracker reset to 0"),
    ("loss_scaler_update", wrong.scaler_grows_to_inf, "overflow float32"),
    ("fp8_scale", wrong.fp8_scale_inverted, "the inverse"),
    ("fp8_scale", wrong.fp8_scale_no_abs, "a negative value is the largest"),
    ("fp8_scale", wrong.fp8_scale_zero_is_inf, "all-zero tensor"),
    ("fp8_scale", wrong.fp8_scale_uncapped, "overflows float32"),
    ("fp8_saturating_cast", wrong.fp8_cast_no_clamp, "clamp to ±torch.finfo(dtype).max first"),
    ("fp8_saturating_cast", wrong.fp8_cast_divides, "multiply by scale"),
    ("fp8_saturating_cast", wrong.fp8_cast_in_bf16, "multiply in float32"),
    ("checkpoint", wrong.checkpoint_no_rng, "dropout drew other masks"),
    ("checkpoint", wrong.checkpoint_keeps_everything, "keeps more than its inputs"),
    ("checkpoint", wrong.checkpoint_no_grad, "does not require grad"),
    ("bucket_assignment", wrong.buckets_forward_order, "walk the indices in reverse"),
    ("bucket_assignment", wrong.buckets_drop_last, "exactly one bucket"),
    ("bucket_assignment", wrong.buckets_split_at_cap, "differs from frugal.data_parallel.assign_buckets"),
    ("zero_shard_bounds", wrong.shard_floor, "belong to no rank"),
    ("zero_shard_bounds", wrong.shard_uneven, "the shards differ in size"),
    ("zero_shard_bounds", wrong.shard_clipped, "the shards differ in size"),
    ("schedule_1f1b", wrong.schedule_gpipe, "1F1B holds at most"),
    ("schedule_1f1b", wrong.schedule_no_warm_up, "where 1F1B takes"),
    ("schedule_1f1b", wrong.schedule_warm_up_too_long, "1F1B holds at most"),
    ("schedule_1f1b", wrong.schedule_warm_up_unclamped, "forward once and backward once"),
    ("cross_entropy_backward", wrong.ce_unstable, "inf or NaN"),
    ("cross_entropy_backward", wrong.ce_sum, "divide by N"),
    ("cross_entropy_backward", wrong.ce_sign, "the sign is flipped"),
    ("cross_entropy_backward", wrong.ce_in_place, "changed its input logits"),
    ("plan_for_budget", wrong.plan_always_fp32, "the estimator says it does not fit"),
    ("plan_for_budget", wrong.plan_smaller_batch, "changed the batch"),
    ("plan_for_budget", wrong.plan_always_everything, "recomputes although"),
    ("plan_for_budget", wrong.plan_returns_dict, "not a frugal.train.TrainConfig"),
    # the ring's answers start gloo ranks (seconds each): one per way of going wrong
    ("ring_all_reduce", wrong.ring_uses_all_reduce, "it calls dist.all_reduce"),
    ("ring_all_reduce", wrong.ring_reduce_to_rank_0, "it calls dist.reduce"),
    ("ring_all_reduce", wrong.ring_drops_remainder, "does not divide into"),
    ("ring_all_reduce", wrong.ring_no_all_gather, "differs from dist.all_reduce"),
]

CHEAP = [n for n in PARAMS if n not in ("ring_all_reduce", "vector_add_kernel")]


def pasted(name):
    """The solution's source run as a notebook cell would run it: in __main__, its source known to linecache."""
    code = str(exercises.source(name))
    filename = f"<notebook cell: {name}>"
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    namespace = {"__name__": "__main__"}
    exec(compile(code, filename, "exec"), namespace)
    return namespace[name]


def _params(fn):
    return list(inspect.signature(getattr(fn, "fn", fn)).parameters)


def test_names_are_every_exercise_in_lesson_order():
    assert exercises.names() == list(PARAMS)
    lessons = [exercises.lesson_of(n) for n in exercises.names()]
    assert lessons == sorted(lessons) and lessons[0].startswith("00") and lessons[-1].startswith("07")


@pytest.mark.parametrize("name", CHEAP)
def test_the_solution_passes(name):
    result = exercises.check(name, exercises.solution(name))
    assert result.passed and result.message.startswith(f"✓ {name}: passed"), result.message


@pytest.mark.parametrize("name", list(PARAMS))
def test_the_solution_source_pastes_into_a_cell_with_the_signature(name):
    if name == "vector_add_kernel":
        pytest.importorskip("triton")
        import frugal.kernels  # noqa: F401 - the interpreter on a CPU, before the pasted kernel is decorated
    source = inspect.getsource(getattr(exercises.solution(name), "fn", exercises.solution(name)))
    assert str(exercises.source(name)).endswith(source)
    assert source.lstrip().startswith(("def ", "@triton.jit"))
    fn = pasted(name)
    assert _params(fn) == PARAMS[name] == _params(exercises.solution(name))
    doc = inspect.getdoc(getattr(fn, "fn", fn))
    assert doc and len(doc.splitlines()) == 1, f"{name}: the solution needs a one-line docstring"


@pytest.mark.parametrize("name", ["training_flops", "checkpoint", "schedule_1f1b", "cross_entropy_backward"])
def test_a_pasted_solution_passes_too(name):
    result = exercises.check(name, pasted(name))
    assert result.passed, result.message


@pytest.mark.parametrize("name,candidate,phrase", WRONG, ids=[f"{n}-{c.__name__}" for n, c, _ in WRONG])
def test_a_wrong_answer_fails_saying_what_differs(name, candidate, phrase):
    result = exercises.check(name, candidate)
    assert not result.passed and not result.not_done
    assert result.message.startswith(f"✗ {name}: ") and phrase in result.message, result.message
    assert "differs" in result.message or result.hint or result.expected, result.message


@pytest.mark.parametrize("name", list(PARAMS))
def test_a_stub_reports_not_done_yet(name):
    def stub(*args, **kwargs):
        raise NotImplementedError
    result = exercises.check(name, stub)
    if name == "vector_add_kernel" and result.skipped:
        pytest.skip(result.message)
    assert not result.passed and result.not_done and "not done yet" in result.message, result.message


def test_an_exception_of_the_candidate_is_reported_not_raised():
    def broken(n_params, n_tokens):
        return 6 * n_params * n_tokens / 0
    result = exercises.check("training_flops", broken)
    assert not result.passed and "it raised ZeroDivisionError: division by zero" in result.message
    assert "n_params=1, n_tokens=1" in result.message


def test_misuse_raises_naming_the_fix():
    with pytest.raises(ValueError, match="pick one of training_flops, mixed_adam_state_bytes"):
        exercises.check("training_flop", wrong.flops_forward_only)
    with pytest.raises(TypeError, match="must be your function"):
        exercises.check("training_flops", 6.0)
    with pytest.raises(ValueError, match="pick one of"):
        exercises.hint("nope")
    with pytest.raises(ValueError, match="level=4"):
        exercises.hint("training_flops", level=4)


def test_hints_grow_more_concrete_and_name_the_exercise():
    for name in exercises.names():
        hints = [exercises.hint(name, level) for level in (1, 2, 3)]
        assert all(h.startswith(f"**{name}, hint {i} of 3:**") for i, h in enumerate(hints, 1))
        assert len(set(hints)) == 3


def test_a_result_shows_itself_in_a_notebook_once():
    failed = exercises.check("training_flops", wrong.flops_forward_only)
    html = failed._repr_html_()
    assert "expected:" in html and "got:" in html and "hint:" in html and "#cf222e" in html
    passed = exercises.check("training_flops", exercises.solution("training_flops"))
    assert "#1a7f37" in passed._repr_html_() and bool(passed) and not bool(failed)
    shown = []
    import frugal.exercises._core as core
    original, core.display = core.display, shown.append
    try:
        passed._ipython_display_()
        passed._ipython_display_()                    # check() showed it; the cell's value does not again
    finally:
        core.display = original
    assert len(shown) == 1
    assert exercises.source("training_flops")._repr_markdown_().startswith("```python\ndef training_flops(")


def test_the_ring_solution_pasted_in_a_notebook_passes_on_2_and_3_ranks():
    """A notebook's function lives in __main__: the check ships it to the ranks by value (cloudpickle)."""
    result = exercises.check("ring_all_reduce", pasted("ring_all_reduce"))
    assert result.passed and "2 and 3 gloo ranks" in result.message, result.message


@pytest.fixture
def wrong_kernels():
    pytest.importorskip("triton", reason="the Triton exercise needs `pip install triton` (Linux)")
    import frugal.kernels  # noqa: F401 - switches on the interpreter before the kernels below are decorated
    import exercise_wrong_kernels
    return exercise_wrong_kernels


def test_the_kernel_solution_passes(wrong_kernels):
    result = exercises.check("vector_add_kernel", exercises.solution("vector_add_kernel"))
    assert result.passed, result.message
    assert exercises.check("vector_add_kernel", pasted("vector_add_kernel")).passed


@pytest.mark.parametrize("kernel,phrase", [("add_unmasked", "wrote past the end of out"),
                                           ("add_first_block_only", "the first block is right"),
                                           ("add_off_by_one", "wrote past the end of out"),
                                           ("subtract", "another operation than x + y")])
def test_a_wrong_kernel_fails_saying_what_differs(wrong_kernels, kernel, phrase):
    result = exercises.check("vector_add_kernel", getattr(wrong_kernels, kernel))
    assert not result.passed and phrase in result.message, result.message


def test_a_plain_function_is_not_taken_for_a_kernel(wrong_kernels):
    result = exercises.check("vector_add_kernel", wrong.flops_forward_only)
    assert not result.passed and "not a Triton kernel" in result.message


@pytest.mark.skipif(has_triton(), reason="Triton is installed here")
def test_without_triton_the_kernel_check_is_skipped_with_the_fix():
    result = exercises.check("vector_add_kernel", exercises.check)
    assert result.skipped and "pip install triton" in result.message


def test_round_to_bf16_matches_torch_on_every_bit_pattern_class():
    """The reference itself, beyond the check's cases: 2^20 random patterns, bit for bit (NaN as NaN)."""
    x = torch.randint(-2 ** 31, 2 ** 31 - 1, (1 << 20,), dtype=torch.int32, generator=torch.Generator().manual_seed(1))
    x = x.view(torch.float32)
    got, want = exercises.solution("round_to_bf16")(x), x.to(torch.bfloat16).float()
    same = (got.view(torch.int32) == want.view(torch.int32)) | (torch.isnan(got) & torch.isnan(want))
    assert bool(same.all())
