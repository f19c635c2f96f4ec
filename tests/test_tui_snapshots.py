"""SVG snapshots of the chat app's main screens on the demo model (pytest-textual-snapshot).

After an intended UI change, review the diff report pytest prints, then refresh the
snapshots with:  pytest tests/test_tui_snapshots.py --snapshot-update
Screens with token speeds are not snapshotted (timings differ run to run); memory is fixed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pytest_textual_snapshot")

from edge_moe.errors import EdgeMoeError  # noqa: E402
from edge_moe.sampling import SamplingParams  # noqa: E402
from edge_moe.tui.app import ChatApp, ChatInput  # noqa: E402
from edge_moe.tui.loader import LoadOptions, default_loader  # noqa: E402
from edge_moe.tui.session import Loaded  # noqa: E402

UPDATE_HINT = "the screen differs from its snapshot: if intended, run  pytest --snapshot-update"


def fixed_memory(model: Any) -> tuple[int | None, int]:
    return None, 100 * 2**20


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edge_moe.demo import ensure_demo_model

    d = tmp_path_factory.mktemp("demo")
    ensure_demo_model(workdir=d)
    return d


def demo_app(demo_dir: Path, conv_dir: Path) -> ChatApp:
    loader = default_loader(LoadOptions(None, n_threads=2, ctx=512, device="cpu", demo_workdir=demo_dir))
    return ChatApp(loader, SamplingParams(temperature=0.0), 16, conversations_dir=conv_dir, memory=fixed_memory)


async def ready(pilot: Any) -> None:
    """Loaded, and no blinking cursor (a blink phase would make the SVG flaky)."""
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    pilot.app.query_one(ChatInput).cursor_blink = False
    await pilot.pause()


async def command(pilot: Any, text: str) -> None:
    pilot.app.query_one(ChatInput).text = text
    await pilot.press("enter")
    await pilot.pause()


def test_main_screen_wide(snap_compare: Any, demo_dir: Path, tmp_path: Path) -> None:
    assert snap_compare(demo_app(demo_dir, tmp_path), terminal_size=(120, 30), run_before=ready), UPDATE_HINT


def test_help_narrow(snap_compare: Any, demo_dir: Path, tmp_path: Path) -> None:
    async def run_before(pilot: Any) -> None:
        await ready(pilot)
        await command(pilot, "/help")

    assert snap_compare(demo_app(demo_dir, tmp_path), terminal_size=(80, 24), run_before=run_before), UPDATE_HINT


def test_reopened_conversation(snap_compare: Any, demo_dir: Path, tmp_path: Path) -> None:
    conv = tmp_path / "conversations"
    conv.mkdir()
    (conv / "20260101-000000-hello.json").write_text(json.dumps({
        "version": 1, "title": "hello", "system": "",
        "messages": [{"role": "user", "content": "hello"},
                     {"role": "assistant", "content": "**Hi!** A list:\n\n- one\n- two"}],
        "prompt_history": ["hello"]}))

    async def run_before(pilot: Any) -> None:
        await ready(pilot)
        await command(pilot, "/open 1")

    assert snap_compare(demo_app(demo_dir, conv), terminal_size=(120, 30), run_before=run_before), UPDATE_HINT


def test_load_error_narrow(snap_compare: Any, tmp_path: Path) -> None:
    def broken(progress: Any) -> Loaded:
        raise EdgeMoeError("model.gguf: no such model file")

    app = ChatApp(broken, conversations_dir=tmp_path, memory=fixed_memory)
    assert snap_compare(app, terminal_size=(80, 24), run_before=ready), UPDATE_HINT
