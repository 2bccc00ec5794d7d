"""ModelPool on a CUDA device (runs only where a GPU is present; skipped with that reason elsewhere)."""

from __future__ import annotations

import pytest
import torch

from visagent.pool import ModelKey, ModelPool, resolve_device, resolve_dtype, torch_dtype

pytestmark = pytest.mark.gpu


def test_auto_device_and_dtype_pick_the_gpu():
    device = resolve_device("auto")
    assert device == "cuda"
    assert resolve_dtype("auto", device) in ("bfloat16", "float16")


def test_budget_counts_cuda_memory_and_eviction_frees_it():
    def big():
        return torch.nn.Linear(4096, 4096, device="cuda", dtype=torch.bfloat16)  # 32 MiB

    size = 4096 * 4096 * 2 + 4096 * 2
    pool = ModelPool(budget_bytes=int(size * 1.5))
    before = torch.cuda.memory_allocated()
    pool.get(ModelKey("a", "a", "cuda", "bfloat16"), big)
    assert pool.stats()["used_bytes"] >= size
    pool.get(ModelKey("b", "b", "cuda", "bfloat16"), big)  # evicts a
    assert pool.evictions == 1
    assert torch.cuda.memory_allocated() - before < 2 * size
    pool.clear()
    assert torch.cuda.memory_allocated() - before < size // 4
    assert torch_dtype("bfloat16") is torch.bfloat16
