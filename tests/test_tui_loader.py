"""The chat loader's choices (cache, CPU expert threads), with the model and tokenizer stubbed out."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import edge_moe.executor as executor
import edge_moe.hardware as hardware
import edge_moe.planner as planner
import edge_moe.tokenizer as tokenizer
from edge_moe.tui.loader import LoadOptions, default_loader
from edge_moe.tui.session import Loaded
from tests.fake_machines import laptop_4060


class _Model:
    def __init__(self, path: Path, config: Any) -> None:
        self.config, self.device = config, "cpu"


@pytest.fixture
def model_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A model file the stubbed HybridModel and Tokenizer 'load'; no user profile override."""
    monkeypatch.setattr(executor, "HybridModel", _Model)
    monkeypatch.setattr(tokenizer, "Tokenizer", lambda path: SimpleNamespace())
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    path = tmp_path / "m.gguf"
    path.write_bytes(b"stub")
    return path


def _load(path: Path, n_threads: int | None, ctx: int | None = None) -> Loaded:
    return default_loader(LoadOptions(str(path), n_threads=n_threads, ctx=ctx, device="cpu"))(lambda label, f: None)


@pytest.mark.parametrize("flag", [None, 5])
def test_chat_takes_the_plans_threads_unless_told(model_file: Path, monkeypatch: pytest.MonkeyPatch,
                                                  flag: int | None) -> None:
    asked: list[Any] = []

    def plan_for_machine(path: Any, overrides: Any) -> SimpleNamespace:
        asked.append(overrides)
        return SimpleNamespace(cache=None, device="cuda", threads=3, n_ctx=8192, prefill_chunk=256,
                               gpu_experts_config=lambda: None)  # a plan without a cache: no GpuExpertsConfig

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the branch that plans the cache
    monkeypatch.setattr(planner, "plan_for_machine", plan_for_machine)
    loaded = _load(model_file, flag)
    want = flag or 3  # as `edge-moe run`: -t wins over the plan
    assert loaded.model.config.n_threads == want and loaded.n_threads == want
    assert [o.threads for o in asked] == [flag]


@pytest.mark.parametrize("flag", [None, 6])
def test_chat_without_a_plan_takes_the_profiles_threads(model_file: Path, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path, flag: int | None) -> None:
    hw = laptop_4060().detect(tmp_path / "sys")  # 8 physical cores, 4 of them P-cores
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # no cache, no planner run
    monkeypatch.setattr(hardware, "detect_hardware", lambda: hw)
    loaded = _load(model_file, flag)
    want = flag or 4  # what the planner gives without -t: the profile's "auto", P-cores only
    assert loaded.model.config.n_threads == want and loaded.n_threads == want


@pytest.mark.parametrize("flag", [None, 1000])
def test_chat_takes_the_plans_context_and_prefill_step_unless_told(model_file: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   flag: int | None) -> None:
    asked: list[Any] = []

    def plan_for_machine(path: Any, overrides: Any) -> SimpleNamespace:
        asked.append(overrides)
        return SimpleNamespace(cache=None, device="cuda", threads=3, n_ctx=8192, prefill_chunk=256,
                               gpu_experts_config=lambda: None)  # a plan without a cache: no GpuExpertsConfig

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(planner, "plan_for_machine", plan_for_machine)
    config = _load(model_file, None, flag).model.config
    assert config.n_ctx == (flag or 8192) and config.prefill_chunk == 256
    assert [o.n_ctx for o in asked] == [flag]  # -c reaches the planner, which sizes VRAM for it


def test_chat_without_a_plan_has_a_default_context(model_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_moe.tui.loader import CHAT_DEFAULT_CTX

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _load(model_file, 2).model.config.n_ctx == CHAT_DEFAULT_CTX
