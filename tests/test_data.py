import json
import sys
import types

import numpy as np
import pytest
import torch

from frugal import data, data_sources


def test_corpus_is_shipped_small_and_ascii():
    text = data.load_corpus()
    assert 100_000 < len(text.encode("utf-8")) <= 2_000_000   # the shipped corpus stays under 2 MB (the wheel carries it)
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


# ----------------------------------------------------------------------------- load_tokens: every source

def _folder(tmp_path, files: dict[str, bytes]):
    root = tmp_path / "text"
    for name, raw in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(raw)
    return root


def test_load_tokens_corpus_is_the_shipped_text():
    ids = data.load_tokens("corpus")
    assert ids.dtype == torch.int64 and ids.ndim == 1 and torch.equal(ids, data.corpus_tokens())


def test_load_tokens_reads_a_folder_through_a_glob_in_sorted_order(tmp_path):
    root = _folder(tmp_path, {"b.py": b"print(2)\n", "a.py": b"x = 1\n", "sub/c.py": "s = 'é'\n".encode(),
                              "notes.txt": b"not python"})
    ids = data.load_tokens(str(root), glob="**/*.py", cache_dir=tmp_path / "cache")
    text = bytes(ids.tolist()).decode("utf-8")
    assert text == "x = 1\n\nprint(2)\n\ns = 'é'\n\n"          # a, b, sub/c: each file then a newline
    assert "not python" not in text
    one = data.load_tokens(str(root / "a.py"), cache_dir=tmp_path / "cache")   # a single file
    assert bytes(one.tolist()) == b"x = 1\n\n"


def test_the_cache_is_a_memory_mapped_array_reread_when_the_folder_changes(tmp_path):
    root = _folder(tmp_path, {"a.txt": b"hello"})
    cache = tmp_path / "cache"
    first = data.load_tokens(str(root), cache_dir=cache)
    [bin_file] = cache.glob("*.bin")
    assert np.array_equal(np.memmap(bin_file, dtype=np.uint16, mode="r"), first.numpy())   # uint16 ids on disk
    bin_file.write_bytes(np.array([7, 7, 7], dtype=np.uint16).tobytes())   # a cached copy is read, not the file
    assert data.load_tokens(str(root), cache_dir=cache).tolist() == [7, 7, 7]
    (root / "b.txt").write_bytes(b"more")                                  # a new file: a new key, re-read
    assert bytes(data.load_tokens(str(root), cache_dir=cache).tolist()) == b"hello\nmore\n"
    (root / "a.txt").write_bytes(b"HELLO, changed")                        # a changed file (size, mtime): re-read
    assert bytes(data.load_tokens(str(root), cache_dir=cache).tolist()) == b"HELLO, changed\nmore\n"
    assert len(list(cache.glob("*.bin"))) == 3


def test_stdlib_is_the_standard_library_source_tens_of_megabytes():
    files = data_sources.stdlib_files()
    root = data_sources.stdlib_folder()
    assert (root / "os.py") in files and all(f.suffix == ".py" for f in files)
    assert not any("site-packages" in f.parts for f in files)
    size = sum(f.stat().st_size for f in files)
    assert 10e6 < size < 60e6                                              # 31.5 MB on CPython 3.11


@pytest.mark.slow
def test_load_tokens_stdlib_is_cached(tmp_path):
    ids = data.load_tokens("stdlib", cache_dir=tmp_path)
    assert 10e6 < len(ids) < 60e6 and int(ids.max()) < 256
    assert torch.equal(data.load_tokens("stdlib", cache_dir=tmp_path)[:1000], ids[:1000])
    assert len(list(tmp_path.glob("stdlib-*.bin"))) == 1


@pytest.mark.parametrize("files,glob,match", [
    ({}, None, "is empty"),
    ({"a.txt": b"text"}, "**/*.py", "matches no file"),
    ({"a.txt": b"text", "b.bin": b"\x89PNG\0\0\0"}, None, "looks binary"),
    ({"a.txt": "café".encode("latin-1")}, None, "not UTF-8"),
    ({"a.txt": b""}, None, "0 tokens"),
])
def test_bad_folders_are_refused_naming_the_fix(tmp_path, files, glob, match):
    root = _folder(tmp_path, files)
    root.mkdir(exist_ok=True)
    with pytest.raises(ValueError, match=match):
        data.load_tokens(str(root), glob=glob, cache_dir=tmp_path / "cache")


def test_bad_sources_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no-such-thing.*pick 'corpus'"):
        data.load_tokens("no-such-thing")
    with pytest.raises(TypeError, match="pass a string"):
        data.load_tokens(3)
    with pytest.raises(ValueError, match="glob='\\*\\*/\\*.py' applies to a folder"):
        data.load_tokens("corpus", glob="**/*.py")
    (tmp_path / "one.txt").write_text("text")
    with pytest.raises(ValueError, match="applies to a folder"):
        data.load_tokens(str(tmp_path / "one.txt"), glob="*.txt")
    with pytest.raises(ValueError, match="tokenizer='words'"):
        data.load_tokens("corpus", tokenizer="words")


def test_a_text_shorter_than_one_sequence_is_refused():
    with pytest.raises(ValueError, match="fewer than one sequence of seq_len=64"):
        data.validation_batches(torch.arange(50), 2, 4, 64)


def test_validation_batches_are_fixed_and_cover_the_held_out_tokens():
    val = torch.arange(1000)
    batches = data.validation_batches(val, 3, 4, 16)
    assert len(batches) == 3 and all(x.shape == y.shape == (4, 16) for x, y in batches)
    assert all(torch.equal(y, x + 1) for x, y in batches)
    starts = torch.cat([x[:, 0] for x, _ in batches])
    assert int(starts[0]) == 0 and int(batches[-1][1][-1, -1]) == 999     # from the first token to the last
    assert torch.equal(torch.cat([x for x, _ in data.validation_batches(val, 3, 4, 16)]), torch.cat([x for x, _ in batches]))


def test_the_split_is_the_documented_tail():
    tokens = torch.arange(1000)
    train, val = data.split(tokens)
    assert data.VAL_FRACTION == 0.1 and len(val) == 100 and int(val[0]) == 900


class _FakeEncoding:
    def encode_ordinary(self, text):
        return [ord(c) + 1000 for c in text]            # ids above 255: a BPE's ids, not bytes


def test_gpt2_tokenizer_goes_through_tiktoken(tmp_path, monkeypatch):
    fake = types.SimpleNamespace(get_encoding=lambda name: _FakeEncoding())
    monkeypatch.setitem(sys.modules, "tiktoken", fake)
    root = _folder(tmp_path, {"a.txt": b"ab"})
    ids = data.load_tokens(str(root), cache_dir=tmp_path / "c", tokenizer="gpt2")
    assert ids.tolist() == [ord("a") + 1000, ord("b") + 1000, ord("\n") + 1000]
    assert data.load_tokens(str(root), cache_dir=tmp_path / "c").tolist() == [97, 98, 10]   # its own cache key


def test_gpt2_tokenizer_offline_names_the_way_out(tmp_path, monkeypatch):
    def offline(name):
        raise ConnectionError("cannot reach openaipublic.blob.core.windows.net")
    monkeypatch.setitem(sys.modules, "tiktoken", types.SimpleNamespace(get_encoding=offline))
    with pytest.raises(ValueError, match="could not load GPT-2's BPE file.*tokenizer='byte'"):
        data.load_tokens("corpus", tokenizer="gpt2")
    monkeypatch.setitem(sys.modules, "tiktoken", None)                  # not installed
    with pytest.raises(ValueError, match="pip install tiktoken"):
        data.load_tokens("corpus", tokenizer="gpt2")


def test_hf_source_reads_a_local_dataset_through_datasets(tmp_path):
    pytest.importorskip("datasets", reason="the optional `datasets` library is not installed (pip install datasets)")
    root = tmp_path / "ds"
    root.mkdir()
    rows = [{"text": "first line", "id": 1}, {"text": "second", "id": 2}, {"text": "", "id": 3}]
    (root / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ids = data.load_tokens(f"hf:{root}", cache_dir=tmp_path / "cache")
    assert bytes(ids.tolist()).decode() == "first line\nsecond\n"           # the text column; the empty row dropped
    assert len(list((tmp_path / "cache").glob("*.bin"))) == 1
    with pytest.raises(ValueError, match="name the dataset"):
        data.load_tokens("hf:", cache_dir=tmp_path / "cache")
