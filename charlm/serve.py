"""A playground in the browser: write with a model, compare two checkpoints, see its surprisal and
top guesses, classify by topic, with no override to type and no shell quoting.

    python -m charlm.serve                               # the newest run's best.ckpt; prints the URL to open
    python -m charlm.serve ckpt=PATH port=8080 host=0.0.0.0

One Starlette app (docs/serve.md says why not Gradio): the page (``charlm/serve.html``), a few JSON
endpoints, and the generated text streamed as server-sent events while it is written. Nothing is
computed here that another module computes: generation is ``charlm.sampling``'s (the served text is
sample.py's for the same checkpoint, seed and settings), the surprisal and top-5 guesses
``charlm.activations``', their colours ``charlm.page``'s, the topic probabilities ``charlm.classify``'s.
Starlette and uvicorn are the ``serve`` extra: without them the command says so in one line.
"""

from __future__ import annotations

import errno
import importlib.util
import inspect
import json
import math
import shlex
import sys
import threading
import time
from collections import OrderedDict, deque
from pathlib import Path

import torch

from charlm.activations import MAX_CHARS, TOP_K, check_text, surprisal
from charlm.classify import classify, unknown_characters
from charlm.errors import UserError
from charlm.model import CharRNN
from charlm.module import CharLM, load_checkpoint, newest_checkpoint, read_checkpoint
from charlm.page import BITS_STOPS, bits_colors
from charlm.sampling import check_sampling_args, default_prompt, generate, topic_ids

PAGE = Path(__file__).with_name("serve.html")
MAX_LENGTH = 5_000  # characters generated per request (max_length=): one request cannot hold the server for long
MAX_PROMPT = 5_000  # characters of a prompt: with MAX_LENGTH within the surprisal view's MAX_CHARS
MAX_MODELS = 4  # checkpoints kept loaded, the least recently used dropped first: memory stays bounded
CHUNK_SECONDS = 0.05  # an event carries the characters made in this time (the first event: one character)
CHUNK_CHARS = 256


def needs_extra() -> None:
    """Refuse in one line when the ``serve`` extra is not installed."""
    missing = [name for name in ("starlette", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(
            f"python -m charlm.serve needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
            'not installed: pip install -e ".[serve]"'
        )


def shown_path(path: Path) -> str:
    """``path`` relative to the working folder when it is inside it (as the user types it), else absolute."""
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


class Models:
    """The checkpoints this server offers (the one it was started with and every ``.ckpt`` under
    ``runs_dir``), each loaded once and reused by every request; a file written again since (a
    retrained best.ckpt) is loaded again. The ``keep`` used last stay loaded."""

    def __init__(self, default: Path, runs_dir: Path, device: torch.device, keep: int = MAX_MODELS):
        self.default, self.runs_dir, self.device, self.keep = default.resolve(), runs_dir.resolve(), device, keep
        self.loaded: OrderedDict[tuple, CharLM] = OrderedDict()
        self.loads = 0  # checkpoint files read (tests: once per checkpoint)
        self._lock = threading.Lock()  # one load at a time: ten requests for a new checkpoint load it once
        self._runs: dict[tuple, dict] = {}

    def path(self, ckpt) -> Path:
        """The file of ``ckpt`` (``None`` or empty: the default), refused unless this server offers it:
        a page served on another host cannot make it read any file."""
        if ckpt in (None, ""):
            return self.default
        if not isinstance(ckpt, str):
            raise UserError(f"ckpt={ckpt!r} is not a path; pick a checkpoint from the list")
        path = Path(ckpt).expanduser().resolve()
        if not self.offers(path):
            raise UserError(
                f"ckpt={ckpt} is not a checkpoint this server offers: it is not a .ckpt file under "
                f"runs_dir={shown_path(self.runs_dir)} (nor the server's ckpt={shown_path(self.default)}); pick one "
                "from the list, or serve another folder's runs: python -m charlm.serve runs_dir=FOLDER"
            )
        return path

    def offers(self, resolved: Path) -> bool:
        """Whether this server reads ``resolved`` (symbolic links followed): its default checkpoint, or a
        ``.ckpt`` file under ``runs_dir``; a link under ``runs_dir`` to a file outside is not offered."""
        return resolved == self.default or (resolved.suffix == ".ckpt" and resolved.is_relative_to(self.runs_dir))

    def get(self, ckpt) -> tuple[Path, CharLM]:
        path = self.path(ckpt)
        try:
            stat = path.stat()
            key = (path, stat.st_mtime_ns, stat.st_size)
        except OSError:
            key = (path, None, None)  # load_checkpoint says what is wrong
        with self._lock:
            if key in self.loaded:
                self.loaded.move_to_end(key)
                return path, self.loaded[key]
            self.loads += 1
            module = load_checkpoint(path).to(self.device)
            for old in [k for k in self.loaded if k[0] == path]:  # the file's earlier version
                del self.loaded[old]
            self.loaded[key] = module
            while len(self.loaded) > self.keep:
                self.loaded.popitem(last=False)
        return path, module

    def runs(self) -> list[dict]:
        """The picker's list: every ``checkpoints/best.ckpt`` under ``runs_dir`` that this server offers (and
        the default, even deleted since), newest first, with its run's cell, size, topics and test bpc
        (``metrics.json``), or the one line saying why it cannot be read."""
        found = [p for p in self.runs_dir.rglob("checkpoints/best.ckpt") if self.offers(p.resolve())]
        found.sort(key=lambda p: modified(p) or (0, 0), reverse=True)
        if self.default not in [p.resolve() for p in found]:
            found.insert(0, self.default)
        return [self._summary(p) for p in found]

    def _summary(self, path: Path) -> dict:
        """A row of the picker, read again when the checkpoint or its run's metrics.json is written anew
        (a run listed before its test ended shows its test bpc once it has one)."""
        run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        key = (path, modified(path), modified(run / "metrics.json"))
        if key not in self._runs:
            row = {"ckpt": shown_path(path.resolve()), "run": run.name, "mtime": key[1] and key[1][0] / 1e9}
            try:
                row.update(model_summary(read_checkpoint(path)["hyper_parameters"]))
            except UserError as err:  # unreadable, or deleted since the server started
                row["error"] = str(err)
            try:
                row["test_bpc"] = json.loads((run / "metrics.json").read_text(encoding="utf-8")).get("test/bpc")
            except (OSError, ValueError):
                row["test_bpc"] = None  # stopped before its test, or not a run folder
            self._runs[key] = row
        return self._runs[key]


def modified(path: Path) -> tuple[int, int] | None:
    """``path``'s modification time in ns and size (``None``: it does not exist, e.g. deleted since)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def model_summary(hparams: dict) -> dict:
    """What the picker shows of a model: its cell, layers, hidden size and topics."""
    defaults = {k: p.default for k, p in inspect.signature(CharRNN).parameters.items() if p.default is not p.empty}
    model = {**defaults, **dict(hparams["model"])}
    return {
        "cell": model.get("cell"),
        "layers": model.get("layers"),
        "hidden_size": model.get("hidden_size"),
        "topics": list(hparams.get("topics") or []) or None,
        "vocab_size": len(hparams["vocab"]),
    }


def sampling_settings(body: dict, max_length: int) -> dict:
    """The sampling settings of a request, refused in one line as sample.py refuses them, and a length
    over the server's cap."""
    settings = {
        "length": body.get("length", 300),
        "temperature": body.get("temperature", 0.8),
        "top_k": body.get("top_k"),
        "top_p": body.get("top_p"),
        "seed": body.get("seed"),
    }
    if settings["length"] is None:  # the page's length box left empty
        raise UserError(f"the length is missing; type how many characters to write (at most {max_length})")
    check_sampling_args(
        settings["length"], settings["temperature"], settings["top_k"], settings["top_p"], 1, settings["seed"]
    )
    if settings["length"] > max_length:
        raise UserError(
            f"length={settings['length']} is more than this server's max_length={max_length} characters per "
            "request; ask for fewer (or restart the server with a higher max_length=)"
        )
    return settings


def topic_of(module: CharLM, topic) -> list[int] | None:
    """The topic ids as sample.py passes them (``None``: unconditioned or the topic unknown)."""
    return topic_ids(module.topics, topic if topic not in ("", None) else None, every=False)


def checked_text(body: dict, key: str, limit: int) -> str:
    text = body.get(key)
    if not isinstance(text, str):
        raise UserError(f"{key}={text!r} is not text; type some in the box")
    if len(text) > limit:
        raise UserError(f"{key} has {len(text):,} characters, more than this server takes ({limit:,}); shorten it")
    return text


def sample_command(ckpt: Path, prompt: str, settings: dict, topic) -> str:
    """The sample.py command that writes the same text (``shlex`` quotes it; sample.py takes a prompt as typed)."""
    args = [f"ckpt={shown_path(ckpt)}", f"prompt={prompt}"] + [
        f"{k}={'null' if v is None else v}" for k, v in settings.items()
    ]
    return shlex.join(["python", "sample.py", *args, *([f"topic={topic}"] if topic else [])])


def next_chunk(steps, first: bool, stopped=lambda: False) -> str:
    """The characters ``steps`` makes in ``CHUNK_SECONDS`` (one when ``first``: the first shows at once);
    empty at the end. ``stopped()`` is asked before each character."""
    chars, deadline = [], time.perf_counter() + CHUNK_SECONDS
    while not stopped():
        try:
            (char,) = next(steps)
        except StopIteration:
            break
        chars.append(char)
        if first or len(chars) >= CHUNK_CHARS or time.perf_counter() > deadline:
            break
    return "".join(chars)


class Generation:
    """One stream's generator, advanced a chunk at a time in worker threads, that the event loop can end at
    any moment (the connection closed, the server stopping). A generator cannot be closed while a thread
    runs it (``ValueError: generator already executing``): ``end`` closes it at once when no thread does,
    else the thread closes it as it returns, within a character."""

    def __init__(self, steps, stopping: threading.Event):
        self.steps, self.stopping = steps, stopping
        self.ended = threading.Event()
        self.running = threading.Lock()  # held by the thread advancing the generator

    def stopped(self) -> bool:
        return self.ended.is_set() or self.stopping.is_set()

    def chunk(self, first: bool) -> str:
        """The next characters (in a worker thread); empty at the end or once stopped."""
        with self.running:
            chunk = "" if self.stopped() else next_chunk(self.steps, first, self.stopped)
        if self.ended.is_set():
            self.close()
        return chunk

    def end(self) -> None:
        """No more chunks (from the event loop; it does not wait for a thread)."""
        self.ended.set()
        self.close()

    def close(self) -> None:
        if self.running.acquire(blocking=False):  # else the thread running it closes it as it returns
            try:
                self.steps.close()
            finally:
                self.running.release()


def event(name: str, data) -> str:
    """One server-sent event; its data is JSON (one line: a newline in the text is escaped)."""
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def hex_color(rgb) -> str:
    return "#" + "".join(f"{int(v):02x}" for v in rgb)


def surprisal_view(module: CharLM, text: str, topic: list[int] | None) -> dict:
    """Each character of ``text`` with the bits the model paid for it, its colour (the inspector's
    scale) and the model's top-5 guesses for it, as the inspection page shows them."""
    check_text(text, MAX_CHARS)
    ids = torch.from_numpy(module.vocab.encode(text).astype("int64")).to(next(module.net.parameters()).device)
    bits, top_ids, top_probs = surprisal(module.net, ids, TOP_K, None if topic is None else topic[0])
    colors = [hex_color(rgb) for rgb in bits_colors(bits).tolist()]
    chars = module.vocab.chars
    return {
        "chars": list(text),
        "bits": [None if math.isnan(b) else round(float(b), 3) for b in bits],
        "colors": colors,
        "top": [
            [[chars[i], round(float(p), 4)] for i, p in zip(ids_, ps) if i >= 0] for ids_, ps in zip(top_ids, top_probs)
        ],
        "mean_bits": round(float(bits[1:].mean()), 4),
        "unknown": int((ids == 0).sum()),
    }


def create_app(models: Models, max_length: int = MAX_LENGTH):
    """The Starlette app: the page and its endpoints; a bad input is HTTP 400 with ``{"error": one line}``."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
    from starlette.routing import Route

    streams = {"active": 0, "finished": deque(maxlen=100)}  # each stream's end: "done", "stopped", ... (tests)
    stopping = threading.Event()  # set by Ctrl-C (``server``): every stream ends within a character

    def refusing(endpoint):
        async def wrapped(request):
            try:
                body = {}
                if request.method == "POST":
                    try:
                        body = await request.json()
                    except ValueError:
                        raise UserError("the request body is not JSON") from None
                    if not isinstance(body, dict):
                        raise UserError("the request body is not a JSON object")
                return await endpoint(body)
            except UserError as err:
                return JSONResponse({"error": str(err)}, status_code=400)

        return wrapped

    async def page(request):
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    async def runs(body):
        found = await run_in_threadpool(models.runs)
        scale = [[bits, hex_color(rgb)] for bits, rgb in BITS_STOPS]
        return JSONResponse(
            {"runs": found, "default": shown_path(models.default), "max_length": max_length, "scale": scale}
        )

    async def model(body):
        path, module = await run_in_threadpool(models.get, body.get("ckpt"))
        prompt, _ = default_prompt(module.vocab)
        return JSONResponse({"ckpt": shown_path(path), **model_summary(dict(module.hparams)), "default_prompt": prompt})

    async def generate_stream(body):
        settings = sampling_settings(body, max_length)
        prompt = checked_text(body, "prompt", MAX_PROMPT)
        path, module = await run_in_threadpool(models.get, body.get("ckpt"))
        topic = topic_of(module, body.get("topic"))
        steps = generate(module.net, module.vocab, prompt, num_samples=1, topic=topic, **settings)  # checks at once
        generation = Generation(steps, stopping)
        name = None if topic is None else module.topics[topic[0]]

        async def events():
            streams["active"] += 1
            made, end = 0, "stopped"
            try:
                yield event("start", {"prompt": prompt, "command": sample_command(path, prompt, settings, name)})
                while chunk := await run_in_threadpool(generation.chunk, made == 0):
                    made += len(chunk)
                    yield event("text", chunk)
                if stopping.is_set():  # Ctrl-C on the server: the stream ends now, so the server stops at once
                    end = "server stopped"
                    yield event("error", {"error": f"the server was stopped after {made:,} characters; restart it"})
                else:
                    end = "done"
                    yield event("end", {"chars": made})
            except UserError as err:  # found while generating (a model whose outputs are not finite)
                end = "error"
                yield event("error", {"error": str(err)})
            finally:  # also when the client went away: Starlette cancels this stream, and the generation stops
                generation.end()
                streams["active"] -= 1
                streams["finished"].append({"end": end, "chars": made, "length": settings["length"]})

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    async def surprisal_endpoint(body):
        text = checked_text(body, "text", MAX_CHARS)
        _, module = await run_in_threadpool(models.get, body.get("ckpt"))
        topic = topic_of(module, body.get("topic"))
        return JSONResponse(await run_in_threadpool(surprisal_view, module, text, topic))

    async def classify_endpoint(body):
        text = checked_text(body, "text", MAX_CHARS)
        if not text.strip():
            raise UserError("the text is empty; type some to classify")
        _, module = await run_in_threadpool(models.get, body.get("ckpt"))
        warning = unknown_characters(module.vocab, text)
        probabilities = await run_in_threadpool(classify, module, text)
        return JSONResponse({"probabilities": probabilities, "warning": warning})

    app = Starlette(
        routes=[
            Route("/", page),
            Route("/api/runs", refusing(runs)),
            Route("/api/model", refusing(model), methods=["POST"]),
            Route("/api/generate", refusing(generate_stream), methods=["POST"]),
            Route("/api/surprisal", refusing(surprisal_endpoint), methods=["POST"]),
            Route("/api/classify", refusing(classify_endpoint), methods=["POST"]),
        ]
    )
    app.state.models, app.state.streams, app.state.stopping = models, streams, stopping
    return app


def listening_socket(host: str, port):
    """A socket bound to ``host:port`` (``port=0``: any free one), or one line saying why not."""
    import socket

    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise UserError(f"port={port!r} must be a whole number in 0..65535 (0: any free port)")
    try:
        return socket.create_server((host, port))
    except OSError as err:
        another_host = "" if host == "127.0.0.1" or err.errno == errno.EADDRINUSE else ", or host=127.0.0.1"
        raise UserError(
            f"host={host} port={port} cannot be listened on ({(err.strerror or str(err)).split(' (while')[0]}); "
            f"pass another port= (port=0: any free one){another_host}"
        ) from None


def server(app, graceful_seconds: float = 2):
    """The uvicorn server of ``app``. On Ctrl-C (or SIGTERM) it first tells the app's streams to stop, so
    they end at once and it stops without cancelling one mid-chunk (a traceback each, and seconds of waiting)."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            app.state.stopping.set()
            super().handle_exit(sig, frame)

    return Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=graceful_seconds))


def url_of(sock) -> str:
    host, port = sock.getsockname()[:2]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def prepare(cfg) -> tuple[object, object, list[str]]:
    """What ``python -m charlm.serve`` does before it serves: check the settings, load the default
    checkpoint (an unreadable one is refused now, not on the page), bind the port. The app, the socket
    and the notes to print."""
    from charlm.module import usable_device

    needs_extra()
    if isinstance(cfg.max_length, bool) or not isinstance(cfg.max_length, int) or cfg.max_length < 1:
        raise UserError(f"max_length={cfg.max_length!r} must be a whole number >= 1")
    notes = []
    ckpt = cfg.ckpt
    if not ckpt:
        ckpt = newest_checkpoint(cfg.runs_dir)
        notes.append(f"no ckpt given: using the newest run's {ckpt}")
    models = Models(Path(ckpt), Path(cfg.runs_dir), usable_device(cfg.device))
    models.get(None)
    sock = listening_socket(str(cfg.host), cfg.port)
    return create_app(models, cfg.max_length), sock, notes


def _main() -> None:
    import hydra

    from charlm.config import CONF_DIR, command_line
    from charlm.errors import exit_on_user_error

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="serve")
    def main(cfg) -> None:
        with exit_on_user_error():
            app, sock, notes = prepare(cfg)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        print(f"charlm playground: open {url_of(sock)} (Ctrl-C stops it)", flush=True)
        try:
            server(app).run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn stops gracefully, then raises the Ctrl-C again: no traceback
            pass

    command_line(sys.argv, "python -m charlm.serve", "serve", "ckpt", "runs_dir", "host")
    main()


if __name__ == "__main__":
    _main()
