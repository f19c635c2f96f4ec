"""`edge-moe chat`: a Textual chat app over HybridModel.

Loading and generation run in thread workers; tokens go into a buffer that a 10 Hz timer
renders (the Markdown widget is re-parsed at most ten times a second, so typing stays responsive).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import events, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message as TMessage
from textual.widgets import Footer, Header, Label, Markdown, ProgressBar, TextArea

from edge_moe.errors import EdgeMoeError
from edge_moe.generate import GenerationStats
from edge_moe.sampling import SamplingParams
from edge_moe.tui.loader import LoadOptions, Loader, default_loader
from edge_moe.tui.session import ChatSession, Loaded, default_conversations_dir, list_conversations
from edge_moe.tui.stats_panel import MemoryProbe, StatsLine, StatsPanel, real_memory, snapshot, stats_report

if TYPE_CHECKING:
    from edge_moe.bench_stats import RunFigure

NARROW = 100  # columns under which the side panel becomes a one-line strip
FLUSH_SECONDS = 0.1  # streaming render period

HELP = """\
**Keys**
- `Enter` send · `Ctrl+J` or `Shift+Enter` (where the terminal reports it) new line
- `Up` / `Down` on the first / last line: earlier / later prompts
- `Esc` stop generating (the partial reply is kept) · `Ctrl+Q` quit
- `PageUp` / `PageDown` scroll the conversation · `Tab` moves the focus

**Commands**
- `/help` this help · `/clear` new conversation · `/regen` answer the last prompt again
- `/system TEXT` set the system prompt (`/system` shows it, `/system none` clears it)
- `/stats` speeds, cache hit rate per layer, memory
- `/save` save the conversation · `/open` list saved ones · `/open N` reopen number N
"""


def describe_error(e: BaseException) -> str:
    """A user-facing line for any failure: never a traceback on the terminal."""
    if isinstance(e, EdgeMoeError):
        return str(e)
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return f"out of memory: {e}. Try a smaller --ctx or --gpu-budget."
    return f"{type(e).__name__}: {e}"


class ChatInput(TextArea):
    """Multi-line prompt box: Enter sends, Ctrl+J / Shift+Enter insert a newline, Up/Down recall prompts."""

    class Submitted(TMessage):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.prompts: list[str] = []
        self._recall: int | None = None  # index into history while browsing it

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.prevent_default()
            event.stop()
            self._recall = None
            self.post_message(self.Submitted(self.text))
            return
        if event.key in ("ctrl+j", "shift+enter", "alt+enter"):
            event.prevent_default()
            event.stop()
            self.insert("\n")
            return
        row = self.cursor_location[0]
        if event.key == "up" and row == 0 and self.prompts:
            event.prevent_default()
            event.stop()
            self._recall = len(self.prompts) - 1 if self._recall is None else max(self._recall - 1, 0)
            self._show(self.prompts[self._recall])
            return
        if event.key == "down" and self._recall is not None and row == self.document.line_count - 1:
            event.prevent_default()
            event.stop()
            self._recall += 1
            self._show(self.prompts[self._recall] if self._recall < len(self.prompts) else "")
            if self._recall >= len(self.prompts):
                self._recall = None
            return
        await super()._on_key(event)

    def _show(self, text: str) -> None:
        self.text = text
        self.move_cursor(self.document.end)


class ChatMessage(Markdown):
    """One turn; the border title says who speaks."""

    def __init__(self, role: str, text: str) -> None:
        super().__init__(text, classes=role)
        self.border_title = {"user": "you", "assistant": "assistant"}.get(role, role)


class Note(Markdown):
    """App output that is not part of the conversation (help, stats, errors)."""


class ChatApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "edge-moe chat"
    BINDINGS = [
        Binding("escape", "stop", "Stop", priority=True),
        Binding("ctrl+q", "quit", "Quit", priority=True),
        # why: the input keeps focus, so the conversation scrolls from there without the mouse
        Binding("pageup", "scroll_conversation(-1)", "Scroll", show=False, priority=True),
        Binding("pagedown", "scroll_conversation(1)", "Scroll", show=False, priority=True),
    ]

    def __init__(self, loader: Loader, params: SamplingParams | None = None, max_tokens: int = 512,
                 conversations_dir: Path | None = None, memory: MemoryProbe = real_memory,
                 model_name: str = "", record_figures: bool = True) -> None:
        super().__init__()
        self.record_figures = record_figures
        self.run_figure: RunFigure | None = None  # after a reply, when figures are recorded
        self.loader = loader
        self.params = params or SamplingParams()
        self.max_tokens = max_tokens
        self.conversations_dir = conversations_dir or default_conversations_dir()
        self.memory = memory
        self.session = ChatSession()
        self.loaded: Loaded | None = None
        self.load_error: str | None = None
        self.generating = False
        self.gen_stats: GenerationStats | None = None
        self._stream: list[str] = []  # pieces from the worker (list.append is atomic under the GIL)
        self._stream_view: ChatMessage | None = None
        self._shown = 0  # pieces already rendered
        self.sub_title = model_name

    # --- layout -------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="main"):
            with Vertical(id="chat"):
                with Vertical(id="loading"):
                    yield Label("loading the model…", id="load-label")
                    yield ProgressBar(total=100, show_eta=False, id="load-bar")
                yield VerticalScroll(id="conversation")
                yield StatsLine(id="stats-line")
                yield ChatInput(id="input", placeholder="Message (Enter sends, /help for commands)")
            yield StatsPanel(id="stats")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#input", ChatInput).focus()
        self._apply_width(self.size.width)
        self.refresh_stats()
        self.set_interval(FLUSH_SECONDS, self._render_stream)
        self.set_interval(2.0, self.refresh_stats)  # why: RAM changes outside generation too
        self._load()

    def on_resize(self, event: events.Resize) -> None:
        self._apply_width(event.size.width)

    def _apply_width(self, width: int) -> None:
        self.set_class(width < NARROW, "-narrow")

    # --- loading ------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="load")
    def _load(self) -> None:
        try:
            loaded = self.loader(lambda label, frac: self.call_from_thread(self._progress, label, frac))
        except BaseException as e:  # noqa: BLE001 - shown in the app, never as a traceback
            self.call_from_thread(self._load_failed, describe_error(e))
            return
        self.call_from_thread(self._loaded, loaded)

    def _progress(self, label: str, frac: float) -> None:
        self.query_one("#load-label", Label).update(label + "…")
        self.query_one("#load-bar", ProgressBar).update(progress=100 * frac)

    def _loaded(self, loaded: Loaded) -> None:
        self.loaded = loaded
        self.sub_title = loaded.path.name
        self.query_one("#loading").display = False
        self.refresh_stats()

    def _load_failed(self, message: str) -> None:
        self.load_error = message
        self.query_one("#loading").display = False
        self.note(f"**Could not load the model.** {message}\n\nPress Ctrl+Q to quit.", error=True)

    # --- conversation view --------------------------------------------------------
    def _conversation(self) -> VerticalScroll:
        return self.query_one("#conversation", VerticalScroll)

    def note(self, markdown: str, error: bool = False) -> None:
        self._conversation().mount(Note(markdown, classes="note error" if error else "note"))
        self._conversation().scroll_end(animate=False)

    def _rebuild(self) -> None:
        conv = self._conversation()
        conv.remove_children()
        conv.mount_all([ChatMessage(m.role, m.content) for m in self.session.messages])
        conv.scroll_end(animate=False)

    def refresh_stats(self) -> None:
        s = snapshot(self.loaded, self.gen_stats, self.memory)
        self.query_one("#stats", StatsPanel).show(s)
        self.query_one("#stats-line", StatsLine).show(s)

    # --- input --------------------------------------------------------------------
    def on_chat_input_submitted(self, message: ChatInput.Submitted) -> None:
        text = message.text.strip()
        if not text:
            return
        box = self.query_one("#input", ChatInput)
        if text.startswith("/"):
            box.text = ""
            self.command(text)
            return
        if not self._can_send():
            return
        box.text = ""
        self.session.add_user(message.text.rstrip())
        box.prompts = self.session.prompt_history
        self._conversation().mount(ChatMessage("user", message.text.rstrip()))
        self._start_reply()

    def _can_send(self) -> bool:
        if self.load_error:
            self.note(f"No model: {self.load_error}", error=True)
        elif self.loaded is None:
            self.notify("the model is still loading")
        elif self.generating:
            self.notify("still generating: press Esc to stop")
        else:
            return True
        return False

    def command(self, line: str) -> None:
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        if self.generating and name not in ("/help", "/stats"):
            self.notify("still generating: press Esc to stop first")
            return
        if name == "/help":
            self.note(HELP)
        elif name == "/clear":
            self.session.clear()
            self._rebuild()
            self.notify("new conversation")
        elif name == "/regen":
            if self._can_send():
                if self.session.drop_last_reply():
                    self._rebuild()
                    self._start_reply()
                else:
                    self.note("Nothing to regenerate yet.")
        elif name == "/system":
            if not arg:
                self.note(f"System prompt: {self.session.system or '(none)'}")
            else:
                self.session.system = "" if arg == "none" else arg
                self.note("System prompt cleared." if arg == "none" else f"System prompt set: {arg}")
        elif name == "/stats":
            self.refresh_stats()
            self.note(stats_report(snapshot(self.loaded, self.gen_stats, self.memory)))
        elif name == "/save":
            self._save()
        elif name == "/open":
            self._open(arg)
        else:
            self.note(f"Unknown command `{name}`: try /help", error=True)

    def _save(self) -> None:
        if not self.session.messages:
            self.note("Nothing to save yet.")
            return
        try:
            path = self.session.save(self.conversations_dir)
        except OSError as e:
            self.note(f"Could not save: {e}", error=True)
            return
        self.note(f"Saved to `{path}`")

    def _open(self, arg: str) -> None:
        saved = list_conversations(self.conversations_dir)
        if not arg:
            if not saved:
                self.note(f"No saved conversations in `{self.conversations_dir}`")
            else:
                lines = "\n".join(f"{i}. {title}" for i, (_, title) in enumerate(saved, 1))
                self.note(f"Saved conversations (newest first); `/open N` reopens one:\n\n{lines}")
            return
        if not arg.isdigit() or not 1 <= int(arg) <= len(saved):
            self.note(f"No conversation number {arg}: `/open` lists them", error=True)
            return
        try:
            self.session = ChatSession.load(saved[int(arg) - 1][0])
        except EdgeMoeError as e:
            self.note(str(e), error=True)
            return
        self.query_one("#input", ChatInput).prompts = self.session.prompt_history
        self._rebuild()
        self.notify(f"reopened: {self.session.title}")

    # --- generation ---------------------------------------------------------------
    def _start_reply(self) -> None:
        self.generating = True
        self.gen_stats = GenerationStats()
        self._stream = []
        self._shown = 0
        self._stream_view = ChatMessage("assistant", "…")
        self._conversation().mount(self._stream_view)
        self._conversation().scroll_end(animate=False)
        self._generate(self.gen_stats)

    @work(thread=True, exclusive=True, group="generate")
    def _generate(self, stats: GenerationStats) -> None:
        assert self.loaded is not None
        error = None
        try:
            for piece in self.session.reply(self.loaded, self.max_tokens, self.params, stats):
                self._stream.append(piece)
        except BaseException as e:  # noqa: BLE001 - shown in the app, never as a traceback
            error = describe_error(e)
        if self.record_figures:
            self._keep_figure()
        self.call_from_thread(self._reply_done, error)

    def _keep_figure(self) -> None:
        """Keep the DRAM figure of the session's decode steps so far for later plans (as `edge-moe
        run` does). After each reply rather than at exit: a chat often ends by a closed terminal,
        never reaching a clean shutdown; the write happens here in the worker, not on the UI thread;
        and the counters are cumulative, so each reply's write refines the last one's figure."""
        try:
            from edge_moe.bench_stats import keep_run_figure

            assert self.loaded is not None
            self.run_figure = keep_run_figure(self.loaded.model)
        except Exception:  # noqa: BLE001 - a figure is a bonus: a stand-in model or a broken cache dir skips it
            self.run_figure = None

    def _render_stream(self) -> None:
        """Render new tokens (at most once per FLUSH_SECONDS) and refresh the live stats."""
        if self._stream_view is None or len(self._stream) == self._shown:
            return
        self._shown = len(self._stream)
        self._stream_view.update("".join(self._stream[: self._shown]))
        self._conversation().scroll_end(animate=False)
        self.refresh_stats()

    def _reply_done(self, error: str | None) -> None:
        self._render_stream()
        if self._stream_view is not None:
            self._stream_view.update("".join(self._stream) or "*(empty reply)*")
            if self.gen_stats and self.gen_stats.stop_reason == "stopped":
                self._stream_view.border_subtitle = "stopped"
        self._stream_view = None
        self.generating = False
        self.refresh_stats()
        if error:
            self.note(f"Generation failed: {error}", error=True)

    def action_scroll_conversation(self, direction: int) -> None:
        conv = self._conversation()
        if direction < 0:
            conv.scroll_page_up(animate=False)
        else:
            conv.scroll_page_down(animate=False)

    def action_stop(self) -> None:
        if self.generating:
            self.session.stop()

    def on_unmount(self) -> None:
        self.session.stop()

    async def action_quit(self) -> None:
        self.session.stop()
        self.exit(1 if self.load_error else 0)


def run_chat(model_path: str | None, n_threads: int | None, ctx: int | None, gpu_budget_gib: float | None,
             record_figures: bool = True) -> int:
    """Entry point of `edge-moe chat` (None model: the built-in demo)."""
    opts = LoadOptions(model_path, n_threads, ctx, gpu_budget_gib)
    app = ChatApp(default_loader(opts), model_name=Path(model_path).name if model_path else "demo",
                  record_figures=record_figures)
    result = app.run()
    if app.loaded is not None:
        app.loaded.close()
    if app.load_error:
        import sys

        print(f"edge-moe: error: {app.load_error}", file=sys.stderr)
        return 2
    return int(result or 0)
