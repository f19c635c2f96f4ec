"""The chat app, driven by Textual's Pilot on the real (tiny, random-weight) demo model."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("textual")

from edge_moe.errors import EdgeMoeError  # noqa: E402
from edge_moe.sampling import SamplingParams  # noqa: E402
from edge_moe.tui.app import ChatApp, ChatInput, ChatMessage, Note  # noqa: E402
from edge_moe.tui.loader import LoadOptions, default_loader  # noqa: E402
from edge_moe.tui.session import ChatSession, Loaded, list_conversations  # noqa: E402
from edge_moe.tui.stats_panel import StatsSnapshot, heat_strip, stats_report  # noqa: E402

# async tests run through anyio's pytest plugin (anyio belongs in the test extras), on asyncio
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


GREEDY = SamplingParams(temperature=0.0)
MAX_TOKENS = 16


def fixed_memory(model: Any) -> tuple[int | None, int]:
    return None, 100 * 2**20


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edge_moe.demo import ensure_demo_model

    d = tmp_path_factory.mktemp("demo")
    ensure_demo_model(workdir=d)  # built once for the session
    return d


def make_app(demo_dir: Path, conv_dir: Path, loader: Callable[..., Loaded] | None = None) -> ChatApp:
    loader = loader or default_loader(LoadOptions(None, n_threads=2, ctx=512, demo_workdir=demo_dir))
    return ChatApp(loader, GREEDY, MAX_TOKENS, conversations_dir=conv_dir, memory=fixed_memory)


async def settle(pilot: Any) -> None:
    """Wait for the load/generation workers, then for the UI to process their callbacks."""
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    await pilot.pause()


async def send(pilot: Any, text: str) -> None:
    pilot.app.query_one(ChatInput).text = text
    await pilot.press("enter")
    await settle(pilot)


def notes(app: ChatApp) -> list[Note]:
    return list(app.query(Note))


def note_text(app: ChatApp) -> str:
    return "\n".join(n.source for n in notes(app))


class GatedModel:
    """The real model, pausing inside the sixth forward until released (a deterministic 'mid-stream')."""

    def __init__(self, model: Any, fail: BaseException | None = None) -> None:
        self._model = model
        self.calls = 0
        self.reached = threading.Event()
        self.release = threading.Event()
        self.fail = fail

    def forward(self, tokens: Any, force_ids: Any = None, **kwargs: Any) -> Any:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        if self.calls == 6:
            self.reached.set()
            self.release.wait(timeout=30)
        return self._model.forward(tokens, force_ids=force_ids, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def gated_loader(demo_dir: Path, gate: dict[str, GatedModel], fail: BaseException | None = None):
    inner = default_loader(LoadOptions(None, n_threads=2, ctx=512, demo_workdir=demo_dir))

    def load(progress: Any) -> Loaded:
        loaded = inner(progress)
        gate["model"] = GatedModel(loaded.model, fail)
        return Loaded(gate["model"], loaded.tokenizer, loaded.path, loaded.plan, loaded.n_threads)

    return load


async def test_type_and_send_streams_a_reply(demo_dir: Path, tmp_path: Path) -> None:
    app = make_app(demo_dir, tmp_path)
    async with app.run_test(size=(120, 30)) as pilot:
        await settle(pilot)
        assert app.loaded is not None
        assert not app.query_one("#loading").display  # the progress is hidden once loaded
        await pilot.press(*"hello", "enter")
        await settle(pilot)
        assert [m.role for m in app.session.messages] == ["user", "assistant"]
        assert app.session.messages[0].content == "hello"
        assert app.session.messages[1].content  # greedy, 16 tokens of gibberish
        views = list(app.query(ChatMessage))
        assert [v.has_class("user") for v in views] == [True, False]
        assert views[1].source == app.session.messages[1].content
        assert app.query_one(ChatInput).text == ""
        assert app.gen_stats is not None and app.gen_stats.generated_tokens > 0


async def test_reply_is_deterministic_and_matches_the_session(demo_dir: Path, tmp_path: Path) -> None:
    replies = []
    for _ in range(2):
        app = make_app(demo_dir, tmp_path)
        async with app.run_test() as pilot:
            await settle(pilot)
            await send(pilot, "hello")
            replies.append(app.session.messages[-1].content)
    assert replies[0] == replies[1]


async def test_multiline_input_and_prompt_recall(demo_dir: Path, tmp_path: Path) -> None:
    app = make_app(demo_dir, tmp_path)
    async with app.run_test() as pilot:
        await settle(pilot)
        await pilot.press("a", "ctrl+j", "b")
        box = app.query_one(ChatInput)
        assert box.text == "a\nb"  # Ctrl+J inserts a newline instead of sending
        await pilot.press("enter")
        await settle(pilot)
        assert app.session.messages[0].content == "a\nb"
        await send(pilot, "second")
        await pilot.press("up")
        assert box.text == "second"
        await pilot.press("up")
        assert box.text == "a\nb"
        await pilot.press("down", "down")  # down from the last line: back to the newer one, then empty
        assert box.text == ""


async def test_escape_stops_and_keeps_the_partial_reply(demo_dir: Path, tmp_path: Path) -> None:
    gate: dict[str, GatedModel] = {}
    app = make_app(demo_dir, tmp_path, gated_loader(demo_dir, gate))
    async with app.run_test() as pilot:
        await settle(pilot)
        app.query_one(ChatInput).text = "hello"
        await pilot.press("enter")
        for _ in range(3000):  # up to ~30 s: a worker that died must fail the test, not hang it
            if gate["model"].reached.is_set():  # the worker is now mid-reply
                break
            await pilot.pause(0.01)
        assert gate["model"].reached.is_set(), "the reply never reached the gated forward"
        assert app.generating
        await pilot.press("escape")
        gate["model"].release.set()
        await settle(pilot)
        assert not app.generating
        assert app.gen_stats is not None and app.gen_stats.stop_reason == "stopped"
        reply = app.session.messages[-1]
        assert reply.role == "assistant"
        assert 0 < app.gen_stats.generated_tokens < MAX_TOKENS
        assert list(app.query(ChatMessage))[-1].source == reply.content
        assert list(app.query(ChatMessage))[-1].border_subtitle == "stopped"


async def test_help_and_unknown_command(demo_dir: Path, tmp_path: Path) -> None:
    app = make_app(demo_dir, tmp_path)
    async with app.run_test() as pilot:
        await settle(pilot)
        await send(pilot, "/help")
        for word in ("/clear", "/regen", "/system", "/stats", "/save", "/open", "Esc", "Ctrl+J"):
            assert word in note_text(app)
        await send(pilot, "/help")  # taller than the view now: PageUp scrolls it from the input
        conv = app.query_one("#conversation")
        assert conv.max_scroll_y > 0 and conv.scroll_y == conv.max_scroll_y
        await pilot.press("pageup")
        await pilot.pause()
        assert conv.scroll_y < conv.max_scroll_y
        await send(pilot, "/bogus")
        assert notes(app)[-1].has_class("error")
        assert not app.session.messages  # commands are not sent to the model


async def test_clear_and_regen(demo_dir: Path, tmp_path: Path) -> None:
    app = make_app(demo_dir, tmp_path)
    async with app.run_test() as pilot:
        await settle(pilot)
        await send(pilot, "/regen")
        assert "Nothing to regenerate" in note_text(app)
        await send(pilot, "hello")
        first = app.session.messages[-1].content
        await send(pilot, "/regen")
        assert [m.role for m in app.session.messages] == ["user", "assistant"]
        assert app.session.messages[-1].content == first  # greedy: the same reply again
        assert len(app.query(ChatMessage)) == 2
        await send(pilot, "/clear")
        assert not app.session.messages and not app.query(ChatMessage)


async def test_system_prompt(demo_dir: Path, tmp_path: Path) -> None:
    app = make_app(demo_dir, tmp_path)
    async with app.run_test() as pilot:
        await settle(pilot)
        await send(pilot, "/system be brief")
        assert app.session.system == "be brief"
        await send(pilot, "hello")  # Mixtral's template refuses a system role: folded into the first turn
        assert app.session.messages[-1].role == "assistant"
        assert not any(n.has_class("error") for n in notes(app))
        await send(pilot, "/system")
        assert "be brief" in notes(app)[-1].source
        await send(pilot, "/system none")
        assert app.session.system == ""


async def test_stats_command_and_panel(demo_dir: Path, tmp_path: Path) -> None:
    app = make_app(demo_dir, tmp_path)
    async with app.run_test(size=(120, 30)) as pilot:
        await settle(pilot)
        await send(pilot, "hello")
        await send(pilot, "/stats")
        report = notes(app)[-1].source
        assert "tok/s" in report and "cache hit rate" in report and "100 MiB" in report
        assert "cache 2x3 LRU" in report  # the demo's partial expert cache
        assert app.query_one("#stats").display and not app.query_one("#stats-line").display
        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        assert not app.query_one("#stats").display and app.query_one("#stats-line").display


async def test_save_and_reopen(demo_dir: Path, tmp_path: Path) -> None:
    conv = tmp_path / "conversations"
    app = make_app(demo_dir, conv)
    async with app.run_test() as pilot:
        await settle(pilot)
        await send(pilot, "/save")
        assert "Nothing to save" in note_text(app)
        await send(pilot, "/system terse")
        await send(pilot, "hello there")
        saved_messages = list(app.session.messages)
        await send(pilot, "/save")
        files = list(conv.glob("*.json"))
        assert len(files) == 1
        data = json.loads(files[0].read_text())
        assert data["system"] == "terse" and data["messages"][0]["content"] == "hello there"
        await send(pilot, "/save")  # saving again overwrites the same file
        assert len(list(conv.glob("*.json"))) == 1

    app2 = make_app(demo_dir, conv)  # a new app: reopen from the directory
    async with app2.run_test() as pilot:
        await settle(pilot)
        await send(pilot, "/open")
        assert "1. hello there" in notes(app2)[-1].source
        await send(pilot, "/open 1")
        assert app2.session.messages == saved_messages and app2.session.system == "terse"
        assert len(app2.query(ChatMessage)) == 2
        await pilot.press("up")
        assert app2.query_one(ChatInput).text == "hello there"  # the reopened prompt history
        await send(pilot, "/open 7")
        assert notes(app2)[-1].has_class("error")


async def test_load_error_is_shown_in_the_app(tmp_path: Path) -> None:
    def broken(progress: Any) -> Loaded:
        progress("reading the tokenizer", 0.2)
        raise EdgeMoeError("missing.gguf: no such model file")

    app = ChatApp(broken, GREEDY, MAX_TOKENS, conversations_dir=tmp_path, memory=fixed_memory)
    async with app.run_test() as pilot:
        await settle(pilot)
        assert app.load_error == "missing.gguf: no such model file"
        assert notes(app)[-1].has_class("error") and "missing.gguf" in notes(app)[-1].source
        await send(pilot, "hello")
        assert "No model" in notes(app)[-1].source and not app.session.messages
        await pilot.press("ctrl+q")
    assert app.return_value == 1  # run_chat turns a failed load into exit status 2


async def test_missing_model_file_with_the_real_loader(tmp_path: Path) -> None:
    loader = default_loader(LoadOptions(str(tmp_path / "nope.gguf")))
    app = ChatApp(loader, GREEDY, MAX_TOKENS, conversations_dir=tmp_path, memory=fixed_memory)
    async with app.run_test() as pilot:
        await settle(pilot)
        assert "nope.gguf: no such model file" in (app.load_error or "")


async def test_generation_error_is_shown_in_the_app(demo_dir: Path, tmp_path: Path) -> None:
    gate: dict[str, GatedModel] = {}
    app = make_app(demo_dir, tmp_path, gated_loader(demo_dir, gate, fail=MemoryError("CUDA out of memory")))
    async with app.run_test() as pilot:
        await settle(pilot)
        await send(pilot, "hello")
        assert "out of memory" in notes(app)[-1].source and notes(app)[-1].has_class("error")
        assert not app.generating


async def test_load_progress_is_visible_while_loading(tmp_path: Path) -> None:
    release = threading.Event()

    def slow(progress: Any) -> Loaded:
        progress("loading the weights", 0.4)
        release.wait(timeout=30)
        raise EdgeMoeError("stopped by the test")

    app = ChatApp(slow, GREEDY, MAX_TOKENS, conversations_dir=tmp_path, memory=fixed_memory)
    async with app.run_test() as pilot:
        bar = app.query_one("#load-bar")
        while bar.progress < 40:
            await pilot.pause(0.01)
        assert app.query_one("#loading").display
        app.query_one(ChatInput).text = "hi"  # typing while loading is fine; sending waits for the model
        await pilot.press("enter")
        await pilot.pause()
        assert not app.session.messages and app.query_one(ChatInput).text == "hi"
        release.set()
        await settle(pilot)


async def test_each_reply_keeps_the_run_figure(demo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               ) -> None:
    """After a reply the session's decode-step DRAM figure is kept beside the machine's measurements
    (a policy any tiny run meets: the real one wants CUDA and more work); `record_figures=False`
    keeps nothing, and a cache dir that cannot be written only skips it."""
    from edge_moe import bench_stats
    from edge_moe import microbench as mb
    from edge_moe.hardware import detect_hardware

    monkeypatch.setattr(bench_stats, "RUN_FIGURE_POLICY",
                        bench_stats.FigurePolicy(min_cpu_seconds=0.0, min_cpu_calls=1, devices=("cuda", "cpu")))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    hw = detect_hardware()
    path = mb.save(mb.MachineMeasurements(dram_gbps=10.0, pcie_h2d_gbps=None, gpu_gemv_gbps=None, threads=2,
                                          measured_at="2026-11-24T00:00:00+00:00", machine_key=mb.machine_key(hw),
                                          cpu_call_us=1.0), hw)
    assert path is not None
    before = path.read_text()

    def chat(record: bool) -> ChatApp:
        loader = default_loader(LoadOptions(None, n_threads=2, ctx=512, demo_workdir=demo_dir))
        return ChatApp(loader, GREEDY, MAX_TOKENS, conversations_dir=tmp_path / "conv", memory=fixed_memory,
                       record_figures=record)

    app = chat(record=False)
    async with app.run_test() as pilot:
        await settle(pilot)
        await send(pilot, "hello")
        assert app.run_figure is None and path.read_text() == before
    assert app.loaded is not None
    app.loaded.close()

    app = chat(record=True)
    async with app.run_test() as pilot:
        await settle(pilot)
        await send(pilot, "hello")
        fig = app.run_figure
        assert fig is not None and fig.recorded and fig.cpu_calls > 0
        saved = mb.load_cached(2, hw)
        assert saved is not None and saved.run_dram_gbps == {fig.shape: pytest.approx(fig.gbps)}
        # the cache dir turns into a file: the next reply still comes, the figure is just not kept
        monkeypatch.setenv("XDG_CACHE_HOME", str(path))
        await send(pilot, "again")
        assert len(app.query(ChatMessage)) == 4 and not app.query(".error")
        assert app.run_figure is not None and not app.run_figure.recorded
    assert app.loaded is not None
    app.loaded.close()


def test_session_round_trip(tmp_path: Path) -> None:
    s = ChatSession(system="sys")
    s.add_user("first line\nsecond")
    s.messages.append(type(s.messages[0])("assistant", "answer"))
    path = s.save(tmp_path, clock=lambda: 0.0)
    again = ChatSession.load(path)
    assert again.messages == s.messages and again.system == "sys" and again.title == "first line"
    assert list_conversations(tmp_path) == [(path, "first line")]
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(EdgeMoeError):
        ChatSession.load(tmp_path / "junk.json")
    assert [p for p, _ in list_conversations(tmp_path)] == [path]  # unreadable files are skipped


def test_heat_strip_and_report() -> None:
    strip = heat_strip([0.0, 1.0, None])
    assert strip.plain == "██▪"
    report = stats_report(StatsSnapshot(layer_rates=[0.5, None], hit_rate=0.5))
    assert "50.0%, —" in report


def test_describe_plan_names_the_placement() -> None:
    from types import SimpleNamespace

    from edge_moe.expert_cache import CacheConfig, ExpertCache
    from edge_moe.tui.loader import describe_plan

    def model(config: CacheConfig | None) -> SimpleNamespace:
        cache = None if config is None else ExpertCache(config, 4, 8, 100)
        return SimpleNamespace(gpu=SimpleNamespace(cache=cache), device="cuda")

    assert describe_plan(model(None)) == "dense on cuda; experts on CPU"
    assert describe_plan(model(CacheConfig(2, 3))) == "dense on cuda; cache 2x3 LRU, misses on CPU"
    assert describe_plan(model(CacheConfig(0, 0, pinned_layers=3))) == "dense on cuda; last 3 layers pinned, misses on CPU"
    assert describe_plan(model(CacheConfig(1, 2, pinned_layers=2))) == (
        "dense on cuda; last 2 layers pinned, cache 1x2 LRU, misses on CPU")
