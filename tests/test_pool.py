"""ModelPool on tiny real models: lazy, loaded once, shared across threads, LRU eviction."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from visagent.checkpoints import resolve_checkpoint
from visagent.errors import ModelUnavailableError
from visagent.pool import ModelKey, ModelPool, model_nbytes


def bert_folder(tmp_path: Path, name: str, hidden: int) -> Path:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=64, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2, intermediate_size=hidden * 2)
    folder = tmp_path / name
    BertModel(cfg).save_pretrained(folder)
    return folder


def test_loads_once_shared_across_threads(tmp_path):
    from transformers import AutoModel

    folder = bert_folder(tmp_path, "bert", 16)
    pool = ModelPool()
    loads = []

    def loader():
        loads.append(1)
        time.sleep(0.2)  # make concurrent first uses overlap
        return AutoModel.from_pretrained(folder)

    key = ModelKey("test", str(folder), "cpu", "float32")
    got = []

    def worker():
        with pool.use(key, loader) as model:
            got.append(id(model))
            with torch.inference_mode():
                model(input_ids=torch.tensor([[1, 2, 3]]))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loads) == 1 and len(set(got)) == 1
    stats = pool.stats()
    assert stats["models"][0]["uses"] == 8 and stats["models"][0]["loads"] == 1
    assert stats["used_bytes"] == model_nbytes(pool.get(key, loader)) > 0


def test_lru_eviction_under_budget(tmp_path):
    from transformers import AutoModel

    folders = {n: bert_folder(tmp_path, n, 32) for n in ("a", "b", "c")}
    size = model_nbytes(AutoModel.from_pretrained(folders["a"]))
    pool = ModelPool(budget_bytes=int(size * 2.5))
    keys = {n: ModelKey(n, str(f), "cpu", "float32") for n, f in folders.items()}
    load = {n: (lambda f=f: AutoModel.from_pretrained(f)) for n, f in folders.items()}
    pool.get(keys["a"], load["a"])
    pool.get(keys["b"], load["b"])
    pool.get(keys["a"], load["a"])  # a is now most recent
    pool.get(keys["c"], load["c"])  # over budget: b (least recent) goes
    assert pool.resident(keys["a"]) and pool.resident(keys["c"]) and not pool.resident(keys["b"])
    assert pool.evictions == 1 and pool.stats()["used_bytes"] <= pool.budget_bytes


def test_model_in_use_is_not_evicted(tmp_path):
    from transformers import AutoModel

    fa, fb = bert_folder(tmp_path, "a", 32), bert_folder(tmp_path, "b", 32)
    pool = ModelPool(budget_bytes=1)
    ka, kb = ModelKey("a", str(fa), "cpu", "float32"), ModelKey("b", str(fb), "cpu", "float32")
    with pool.use(ka, lambda: AutoModel.from_pretrained(fa)):
        pool.get(kb, lambda: AutoModel.from_pretrained(fb))
        assert pool.resident(ka)


def test_failed_load_is_reported_and_retried():
    pool = ModelPool()
    key = ModelKey("x", "y", "cpu", "float32")

    def bad():
        raise OSError("nope")

    with pytest.raises(OSError, match="nope"):
        pool.get(key, bad)
    assert pool.get(key, lambda: torch.nn.Linear(2, 2)) is not None


def test_listeners_see_each_load_once():
    pool = ModelPool()
    events = []
    pool.add_listener(lambda event, key, info: events.append((event, key.family, sorted(info))))
    pool.add_listener(lambda event, key, info: 1 / 0)  # a broken listener never breaks a load
    key = ModelKey("x", "y", "cpu", "float32")
    for _ in range(2):
        pool.get(key, lambda: torch.nn.Linear(4, 4))
    assert events == [("loading", "x", []), ("loaded", "x", ["bytes", "ms"])]

    def bad():
        raise OSError("disk gone\nmore")

    with pytest.raises(OSError):
        pool.get(ModelKey("z", "y", "cpu", "float32"), bad)
    assert events[-1] == ("failed", "z", ["error"])


def test_unavailable_checkpoint_error_names_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError) as exc:
        resolve_checkpoint("someone/not-cached-model", family="detect", backend="transformers", cache_dir=tmp_path)
    msg = str(exc.value)
    assert "'someone/not-cached-model' for detect is not available offline" in msg
    assert "models.detect.checkpoint" in msg and "\n" not in msg
    with pytest.raises(ModelUnavailableError, match="not found: /no/such/sam.pth"):
        resolve_checkpoint("/no/such/sam.pth", family="segment", backend="official", cache_dir=tmp_path)
    assert resolve_checkpoint(str(tmp_path), family="x", backend="y", cache_dir=tmp_path) == str(tmp_path.resolve())


def test_out_of_memory_on_load_evicts_idle_models_and_retries():
    pool = ModelPool()
    a, b, big = (ModelKey(f, "c", "cpu", "float32") for f in ("a", "b", "big"))
    pool.get(a, lambda: torch.nn.Linear(4, 4))
    tries = []

    def loader():
        tries.append(1)
        if len(tries) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return torch.nn.Linear(8, 8)

    with pool.use(b, lambda: torch.nn.Linear(4, 4)):  # b is in use: it must stay
        assert pool.get(big, loader) is not None
        assert len(tries) == 2 and pool.evictions == 1
        assert not pool.resident(a) and pool.resident(b) and pool.resident(big)
    # nothing idle left to evict: the error is the caller's
    with pool.use(big, lambda: None), pool.use(b, lambda: None):
        with pytest.raises(torch.cuda.OutOfMemoryError):
            pool.get(ModelKey("c", "c", "cpu", "float32"), lambda: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("out of memory")))
    # other errors are not retried
    with pytest.raises(OSError):
        pool.get(ModelKey("d", "c", "cpu", "float32"), lambda: (_ for _ in ()).throw(OSError("disk")))
