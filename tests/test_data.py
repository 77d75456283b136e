import pytest
import torch

from frugal import data


def test_corpus_is_shipped_small_and_ascii():
    text = data.load_corpus()
    assert 100_000 < len(text.encode("utf-8")) <= 2_000_000   # the issue caps the shipped corpus at 2 MB
    assert text.isascii() and "In the beginning" in text


def test_byte_tokenizer_round_trips_any_text():
    tok = data.ByteTokenizer()
    for text in ["hello", "héllo ∑ 日本", ""]:
        ids = tok.encode(text)
        assert ids.dtype == torch.long and len(ids) == len(text.encode("utf-8"))
        assert tok.decode(ids) == text
    assert int(tok.encode("\xff").max()) < tok.vocab_size == 256


def test_corpus_tokens_are_bytes():
    ids = data.corpus_tokens()
    assert ids.ndim == 1 and 0 <= int(ids.min()) and int(ids.max()) < 128


def test_split_holds_out_the_tail():
    tokens = torch.arange(100)
    train, val = data.split(tokens, 0.1)
    assert len(train) == 90 and torch.equal(val, torch.arange(90, 100))
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="val_fraction"):
            data.split(tokens, bad)


def test_batches_are_windows_with_next_token_targets():
    tokens = torch.arange(1000)
    x, y = data.get_batch(tokens, 4, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 16)
    assert torch.equal(y, x + 1)                                   # arange: the next token is +1
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(4, 15, dtype=torch.long))   # contiguous windows
    x2, _ = data.get_batch(tokens, 4, 16, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)                                      # seeded: reproducible


def test_batch_reaches_the_last_token():
    tokens = torch.arange(10)
    ys = torch.cat([data.get_batch(tokens, 64, 9, torch.Generator().manual_seed(s))[1] for s in range(3)])
    assert int(ys.max()) == 9                                      # the window may end on the last token


@pytest.mark.parametrize("batch,seq", [(0, 8), (4, 0), (-1, 8)])
def test_bad_batch_sizes_are_refused(batch, seq):
    with pytest.raises(ValueError, match="positive"):
        data.get_batch(torch.arange(100), batch, seq)
    with pytest.raises(ValueError, match="positive"):
        data.synthetic_batch(256, batch, seq)


def test_sequence_longer_than_the_text_is_refused():
    with pytest.raises(ValueError, match="seq_len=10"):
        data.get_batch(torch.arange(10), 2, 10)


def test_synthetic_batch_is_random_tokens_shifted_by_one():
    x, y = data.synthetic_batch(50, 3, 20, torch.Generator().manual_seed(1))
    assert x.shape == y.shape == (3, 20)
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert 0 <= int(x.min()) and int(x.max()) < 50 and x.unique().numel() > 10   # not zeros, not constant
