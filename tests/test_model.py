import pytest
import torch
import torch.nn.functional as F

from frugal.model import GPTConfig, TinyGPT, preset


def test_tiny_preset_is_about_a_tenth_of_a_million_parameters():
    assert 0.08e6 < TinyGPT(preset("tiny")).num_params() < 0.2e6


def test_gpt2_small_preset_has_124m_parameters():
    with torch.device("meta"):
        model = TinyGPT(preset("gpt2-small"))
    assert abs(model.num_params() - 124.5e6) < 0.5e6


def test_embeddings_are_tied():
    model = TinyGPT(preset("tiny"))
    assert model.lm_head.weight is model.wte.weight


def test_forward_shapes_and_loss_near_uniform_at_init():
    cfg = preset("tiny")
    model = TinyGPT(cfg)
    x = torch.randint(cfg.vocab_size, (3, 17))
    logits, loss = model(x, x)
    assert logits.shape == (3, 17, cfg.vocab_size)
    # small init: predictions start near uniform, so the loss is near ln(V)
    assert abs(loss.item() - torch.log(torch.tensor(cfg.vocab_size)).item()) < 1.0


def test_attention_is_causal():
    """Changing a later token leaves the logits at earlier positions unchanged."""
    cfg = preset("tiny")
    model = TinyGPT(cfg).eval()
    x = torch.randint(cfg.vocab_size, (1, 10))
    y = x.clone()
    y[0, 7] = (y[0, 7] + 1) % cfg.vocab_size
    torch.testing.assert_close(model(x)[0][:, :7], model(y)[0][:, :7])


def test_loss_matches_cross_entropy_of_logits():
    cfg = preset("tiny")
    model = TinyGPT(cfg)
    x, t = torch.randint(cfg.vocab_size, (2, 2, 9))
    logits, loss = model(x, t)
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, cfg.vocab_size), t.reshape(-1)))


def test_blocks_are_exposed_for_later_lessons():
    model = TinyGPT(preset("tiny", n_layer=3))
    assert len(model.blocks) == 3


def test_sequence_longer_than_block_size_is_refused_with_the_fix():
    cfg = preset("tiny")
    with pytest.raises(ValueError, match="block_size"):
        TinyGPT(cfg)(torch.zeros(1, cfg.block_size + 1, dtype=torch.long))


@pytest.mark.parametrize("field,value", [("n_layer", 0), ("n_embd", -4), ("vocab_size", 0)])
def test_bad_sizes_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        GPTConfig(**{field: value})


def test_heads_must_divide_width():
    with pytest.raises(ValueError, match="n_head"):
        GPTConfig(n_embd=30, n_head=4)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="tiny"):
        preset("huge")


def test_generate_appends_tokens():
    cfg = preset("tiny")
    out = TinyGPT(cfg).generate(torch.zeros(1, 1, dtype=torch.long), 5, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 6)
