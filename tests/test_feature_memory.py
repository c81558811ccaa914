"""Bounded-memory feature caches: pooled-only reads for dual students, token states read per batch (ShardedRows).

Synthetic caches are written directly in the cache format (shards + manifest, as `dcd features` writes them). The
memory test runs each read path in a fresh process on a cache whose token states (~134 MB) would blow the ceiling,
and compares the process's peak resident memory with its memory after imports.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dcd_itr.errors import CorruptFileError
from dcd_itr.feature_rows import ShardedRows, read_safetensors_header
from dcd_itr.features import load_feature_cache
from dcd_itr.interfaces import slice_features
from dcd_itr.io_utils import tensors_sha256, with_checksum

SRC = Path(__file__).resolve().parents[1] / "src"
MIB = 2**20


def write_synthetic_cache(
    directory: Path,
    num_items: int,
    shard_size: int,
    tokens: tuple[int, int] = (8, 4),  # (L, C) per row
    pooled_dim: int = 6,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """A complete text-feature cache folder: tokens (n, L, C), mask (n, L) bool, pooled (n, D); row i's values
    are i-based, so any gathered row can be checked by its content."""
    directory.mkdir(parents=True, exist_ok=True)
    for index, start in enumerate(range(0, num_items, shard_size)):
        rows = torch.arange(start, min(start + shard_size, num_items), dtype=torch.float32)  # (n,)
        tensors = {
            "tokens": (rows.view(-1, 1, 1) + torch.zeros(1, *tokens)).to(dtype).contiguous(),  # (n, L, C)
            "mask": torch.ones(len(rows), tokens[0], dtype=torch.bool),  # (n, L)
            "pooled": (rows.view(-1, 1) * 0.5 + torch.arange(pooled_dim)).to(dtype).contiguous(),  # (n, D)
        }
        save_file(tensors, str(directory / f"shard-{index:05d}.safetensors"), metadata=with_checksum(tensors))
    manifest = {
        "format": 1,
        "kind": "text",
        "split": "train",
        "num_items": num_items,
        "shard_size": shard_size,
        "storage_dtype": str(dtype).removeprefix("torch."),
        "dataset_fingerprint": "synthetic",
        "tower": {},
        "complete": True,
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


@pytest.fixture
def small_cache(tmp_path) -> Path:
    return write_synthetic_cache(tmp_path / "cache", num_items=300, shard_size=64)


def test_pooled_only_read_equals_the_whole_read(small_cache):
    whole = load_feature_cache(small_cache)
    pooled = load_feature_cache(small_cache, names=("pooled",))
    assert set(pooled) == {"pooled"} and set(whole) == {"tokens", "mask", "pooled"}
    torch.testing.assert_close(pooled["pooled"], whole["pooled"], rtol=0, atol=0)
    assert pooled["pooled"][299, 0] == 149.5  # row 299 -> 0.5 * 299 + 0


def test_lazy_rows_gather_what_the_whole_read_holds(small_cache):
    whole = load_feature_cache(small_cache)
    lazy = load_feature_cache(small_cache, lazy=True)
    assert all(isinstance(value, ShardedRows) for value in lazy.values())
    assert lazy["tokens"].shape == whole["tokens"].shape == (300, 8, 4) and len(lazy["mask"]) == 300
    rows = torch.tensor([5, 299, 64, 63, 5, 130, 0])  # repeats, shard edges, out of order
    for name in whole:
        torch.testing.assert_close(lazy[name][rows], whole[name][rows], rtol=0, atol=0)
        torch.testing.assert_close(lazy[name][10:200:3], whole[name][10:200:3], rtol=0, atol=0)
        torch.testing.assert_close(lazy[name][-1], whole[name][-1], rtol=0, atol=0)
    assert lazy["mask"][rows].dtype == torch.bool and lazy["tokens"][:0].shape == (0, 8, 4)
    batch = slice_features(lazy, rows)  # what a training step does with cached features
    assert batch["tokens"][1, 0, 0] == 299.0 and batch["pooled"].shape == (7, 6)
    assert lazy["tokens"].to("cpu") is lazy["tokens"]  # moving to the CPU keeps rows on disk
    with pytest.raises(IndexError, match="out of range"):
        lazy["tokens"][torch.tensor([300])]


def test_lazy_rows_cast_half_storage_to_the_asked_dtype(tmp_path):
    cache = write_synthetic_cache(tmp_path / "half", num_items=70, shard_size=32, dtype=torch.float16)
    lazy = load_feature_cache(cache, dtype=torch.float32, lazy=True)
    assert lazy["tokens"][torch.tensor([69])].dtype == torch.float32
    assert lazy["tokens"][69, 0, 0] == 69.0 and lazy["mask"][3].dtype == torch.bool


@pytest.mark.parametrize("name", ["pooled", "tokens"])
def test_pooled_only_read_still_checks_the_whole_shard(small_cache, name):
    whole = load_feature_cache(small_cache)
    shard = small_cache / "shard-00001.safetensors"
    data_start, header = read_safetensors_header(shard)
    offset = data_start + header[name]["data_offsets"][0] + 5
    raw = bytearray(shard.read_bytes())
    raw[offset] ^= 0xFF  # a flipped byte in the tensor read, or in one only hashed
    shard.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match=r"shard-00001.*do not match the checksum"):
        load_feature_cache(small_cache, names=("pooled",))
    raw[offset] ^= 0xFF
    shard.write_bytes(bytes(raw))
    assert tensors_sha256(load_feature_cache(small_cache, names=("pooled",))) == tensors_sha256(
        {"pooled": whole["pooled"]}
    )


def test_truncated_or_incomplete_shards_are_named(small_cache):
    shard = small_cache / "shard-00004.safetensors"
    shard.write_bytes(shard.read_bytes()[:-200])
    with pytest.raises(CorruptFileError, match="shard-00004.*truncated"):
        load_feature_cache(small_cache, lazy=True)
    with pytest.raises(CorruptFileError, match="no readable tensor 'nothing'"):
        load_feature_cache(small_cache, names=("nothing",), lazy=True)


MEASURE = """
import sys
import torch
from dcd_itr.features import load_feature_cache
from dcd_itr.interfaces import slice_features

def status_kib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))

mode, cache = sys.argv[1], sys.argv[2]
torch.zeros(1000, 1000).sum()  # allocator warmed before the baseline
try:  # reset the peak (VmHWM) to the current RSS, so the import phase's peak does not count
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
except OSError:
    pass
baseline = status_kib("VmRSS")
if mode == "pooled":
    features = load_feature_cache(cache, names=("pooled",))
    assert features["pooled"].shape[0] == 2048
elif mode == "lazy":
    features = load_feature_cache(cache, lazy=True)
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):  # 20 training batches of 64 random rows
        batch = slice_features(features, torch.randint(0, 2048, (64,), generator=generator))
        assert batch["tokens"].shape == (64, 64, 256)
else:
    features = load_feature_cache(cache)
print(max(status_kib("VmHWM") - baseline, 0) * 1024)
"""


def peak_growth(mode: str, cache: Path) -> int:
    """Bytes by which a fresh process's peak RSS (VmHWM, reset after imports) exceeds its RSS after imports while
    reading ``cache``."""
    env = {"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, mode, str(cache)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return int(result.stdout.split()[-1])


def test_dual_and_batched_reads_stay_under_a_memory_ceiling_the_whole_read_breaks(tmp_path):
    # token states: 2048 x 64 x 256 float32 = 128 MiB; pooled: 2048 x 384 = 3 MiB
    cache = write_synthetic_cache(tmp_path / "big", 2048, shard_size=256, tokens=(64, 256), pooled_dim=384)
    ceiling = 64 * MIB  # measured here: pooled 8 MiB, lazy 28 MiB, whole 277 MiB
    pooled, lazy, whole = (peak_growth(mode, cache) for mode in ("pooled", "lazy", "whole"))
    assert pooled < ceiling, f"pooled-only read grew the peak RSS by {pooled / MIB:.0f} MiB"
    assert lazy < ceiling, f"20 lazy batches grew the peak RSS by {lazy / MIB:.0f} MiB"
    assert whole > 128 * MIB > ceiling  # the ceiling is meaningful: holding the token states breaks it
