"""Where training text comes from: a file or folder, the Python standard library, a Hugging Face dataset;
the tokenizers (bytes, or tiktoken's GPT-2 BPE) and the on-disk cache of token ids.

The cache is nanoGPT's: one flat array of uint16 token ids per source, read back memory-mapped, under a key
that hashes the source, the tokenizer and every file's path, size and modification time, so a folder that
changed is read again and one that did not is never re-tokenized.
"""
from __future__ import annotations

import hashlib
import json
import os
import sysconfig
from pathlib import Path

import numpy as np

SNIFF_BYTES = 8192          # a NUL byte in a file's first 8 KiB marks it binary (as git and grep decide)
SKIPPED_PARTS = ("site-packages", "dist-packages", "__pycache__")   # not the standard library's own source
TOKENIZERS = ("byte", "gpt2")


def default_cache_dir() -> Path:
    """~/.cache/frugal/tokens: where tokenized sources are kept between runs."""
    return Path.home() / ".cache" / "frugal" / "tokens"


# ----------------------------------------------------------------------------- files

def list_files(folder: Path, glob: str | None) -> list[Path]:
    """The files under folder that glob matches ('**/*' when None), in sorted order; refuses none at all."""
    pattern = glob or "**/*"
    files = sorted(p for p in folder.glob(pattern) if p.is_file())
    if not files:
        if not any(folder.iterdir()):
            raise ValueError(f"data folder {str(folder)!r} is empty: point data at a folder holding text files")
        raise ValueError(f"glob={pattern!r} matches no file under {str(folder)!r}: try glob='**/*.txt' or "
                         f"'**/*.py' (** reaches into subfolders)")
    return files


def read_text_bytes(path: Path, skip_bad: bool = False) -> bytes | None:
    """The file's bytes after checking they are UTF-8 text; with skip_bad, None instead of an error."""
    raw = path.read_bytes()
    if b"\0" in raw[:SNIFF_BYTES]:
        if skip_bad:
            return None
        raise ValueError(f"{str(path)!r} looks binary (a NUL byte in its first {SNIFF_BYTES} bytes): narrow "
                         f"glob to text files, e.g. glob='**/*.txt'")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if skip_bad:
            return None
        raise ValueError(f"{str(path)!r} is not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r}): "
                         f"convert it (iconv -t utf-8) or leave it out with a narrower glob") from None
    return raw


def stdlib_folder() -> Path:
    """The standard library's source folder of this interpreter (sysconfig's 'stdlib' path)."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[Path]:
    """Every .py file of the standard library (its tests included), installed packages left out: about 1800
    files and 31 MB on CPython 3.11, 25-35 MB on other versions."""
    root = stdlib_folder()
    return [p for p in sorted(root.rglob("*.py")) if not set(p.relative_to(root).parts) & set(SKIPPED_PARTS)]


def fingerprint(files: list[Path]) -> list:
    """What the cache key sees of files: path, size and modification time (ns) of each."""
    out = []
    for p in files:
        st = p.stat()
        out.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    return out


# ----------------------------------------------------------------------------- tokenizers

def encode_bytes(raw: bytes) -> np.ndarray:
    """Byte-level tokens: each UTF-8 byte is its own id (0-255), as data.ByteTokenizer does, without a list."""
    return np.frombuffer(raw, dtype=np.uint8).astype(np.uint16)


def gpt2_encoder():
    """tiktoken's GPT-2 encoding, or a ValueError naming what is missing (the package, or its BPE file offline)."""
    try:
        import tiktoken
    except ImportError:
        raise ValueError("tokenizer='gpt2' needs tiktoken: pip install tiktoken (or use tokenizer='byte')") from None
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # noqa: BLE001 - tiktoken raises requests' or its own errors when it cannot fetch
        raise ValueError(f"tokenizer='gpt2': tiktoken could not load GPT-2's BPE file ({type(e).__name__}: "
                         f"{str(e)[:120]}); it downloads it on first use, so run once online, or use "
                         f"tokenizer='byte'") from None


def encoder(tokenizer: str):
    """bytes -> uint16 token ids for a tokenizer name ('byte' or 'gpt2')."""
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"tokenizer={tokenizer!r}: pick one of {TOKENIZERS}")
    if tokenizer == "byte":
        return encode_bytes
    enc = gpt2_encoder()
    return lambda raw: np.array(enc.encode_ordinary(raw.decode("utf-8")), dtype=np.uint16)   # ids < 50257


# ----------------------------------------------------------------------------- cache

def cache_path(cache_dir: Path, key: dict) -> Path:
    """<cache_dir>/<name>-<hash of key>.bin: one file per source, tokenizer and state of its files."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    name = "".join(c if c.isalnum() else "_" for c in str(key.get("name", "data")))[-40:]
    return cache_dir / f"{name}-{digest}.bin"


def cached_tokens(path: Path, make) -> np.ndarray:
    """The uint16 ids stored at path (memory-mapped), made by make() and written first when absent."""
    if not path.exists():
        ids = make()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # one per process: ranks may fill the same cache at once
        ids.astype(np.uint16).tofile(tmp)
        tmp.replace(path)                            # atomic: a killed run leaves no half-written cache
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=np.uint16)
    return np.memmap(path, dtype=np.uint16, mode="r")


def files_tokens(files: list[Path], encode, skip_bad: bool = False) -> np.ndarray:
    """The files' texts, each followed by a newline, as one array of ids (sorted order: the split is fixed);
    empty files add nothing."""
    parts = []
    for p in files:
        raw = read_text_bytes(p, skip_bad)
        if raw:
            parts.append(encode(raw + b"\n"))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)


def local_tokens(source: str, glob: str | None, tokenizer: str, cache_dir: Path) -> np.ndarray:
    """A file, a folder (filtered by glob) or 'stdlib', tokenized through the cache."""
    if source == "stdlib":
        files, skip = stdlib_files(), True          # the 4 or so non-UTF-8 test files of CPython are left out
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise ValueError(f"data={source!r}: no such file or folder; pick 'corpus', 'stdlib', "
                             f"'hf:NAME[:CONFIG]' or a path that exists")
        files, skip = (list_files(path, glob) if path.is_dir() else [path]), False
    encode = encoder(tokenizer)
    key = {"name": source, "glob": glob, "tokenizer": tokenizer, "files": fingerprint(files)}
    return cached_tokens(cache_path(cache_dir, key), lambda: files_tokens(files, encode, skip))


def hf_tokens(spec: str, tokenizer: str, cache_dir: Path, split: str = "train") -> np.ndarray:
    """'hf:NAME[:CONFIG]': the text column of a Hugging Face dataset (a hub name, or a local folder of
    text/json/csv/parquet files) through the optional `datasets` library, tokenized through the cache."""
    rest = spec[len("hf:"):]
    name, _, config = rest.partition(":")
    if not name:
        raise ValueError(f"data={spec!r}: name the dataset, e.g. 'hf:roneneldan/TinyStories' or 'hf:wikitext:"
                         f"wikitext-2-raw-v1'")
    try:
        import datasets
    except ImportError:
        raise ValueError(f"data={spec!r} needs the optional `datasets` library: pip install datasets") from None
    ds = datasets.load_dataset(name, config or None, split=split)
    columns = [c for c, f in ds.features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
    if not columns:
        raise ValueError(f"data={spec!r}: the dataset has no text column (columns: {list(ds.features)})")
    column = "text" if "text" in columns else columns[0]
    encode = encoder(tokenizer)
    key = {"name": spec, "split": split, "tokenizer": tokenizer, "fingerprint": ds._fingerprint, "column": column}

    def make():
        parts = [encode(t.encode("utf-8") + b"\n") for t in ds[column] if t]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)
    return cached_tokens(cache_path(cache_dir, key), make)
