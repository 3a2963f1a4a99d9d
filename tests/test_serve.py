"""python -m charlm.serve: the served text is sample.py's, the surprisal the inspector's, the topics the
classifier's; bad input is one line (HTTP 400) and the server keeps serving; ten requests at once are all
answered; a closed connection stops its generation; a checkpoint is loaded once. In process, through
Starlette's TestClient and a real uvicorn server in a thread; the browser test is test_serve_browser.py."""

import contextlib
import importlib.util
import json
import logging.handlers
import os
import shlex
import shutil
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from charlm.activations import TOP_K, inspect_text
from charlm.classify import classify
from charlm.config import CONF_DIR, literal_prompt_overrides
from charlm.errors import UserError
from charlm.module import CharLM, load_checkpoint
from charlm.page import bits_colors
from charlm.sampling import generate_text

from conftest import ROOT, TINY_TEXT

pytest.importorskip("starlette", reason='needs the serve extra: pip install -e ".[serve]" (or ".[test]")')
pytest.importorskip("uvicorn", reason='needs the serve extra: pip install -e ".[serve]" (or ".[test]")')
pytest.importorskip("httpx", reason='needs httpx (Starlette\'s TestClient): pip install -e ".[test]"')

import httpx  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from charlm import serve  # noqa: E402

TOPICS = ["World", "Sports", "Business", "Sci/Tech"]


def save(module: CharLM, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


@pytest.fixture(scope="module")
def runs(tiny_run, tmp_path_factory) -> Path:
    """A runs folder as the picker finds it, oldest first: a checkpoint that cannot be read, a small topic
    model (untrained: its numbers need not be good, only the same as the classifier's and sample.py's),
    and the session's tiny trained run (with metrics.json)."""
    folder = tmp_path_factory.mktemp("serve") / "outputs"
    broken = folder / "runs" / "broken" / "checkpoints" / "best.ckpt"
    broken.parent.mkdir(parents=True)
    broken.write_bytes((tiny_run / "checkpoints" / "best.ckpt").read_bytes()[:1000])
    torch.manual_seed(0)
    vocab = load_checkpoint(tiny_run / "checkpoints" / "best.ckpt").vocab.chars
    topics = CharLM(
        vocab=vocab, model=dict(hidden_size=16, embedding_dim=4, topics=4), topics=TOPICS, topic_counts=[3, 1, 1, 1]
    )
    save(topics, folder / "runs" / "topics" / "checkpoints" / "best.ckpt")
    shutil.copytree(tiny_run, folder / "runs" / "tiny")
    for age, name in enumerate(("tiny", "topics", "broken")):  # newest first: tiny, topics, broken
        os.utime(folder / "runs" / name / "checkpoints" / "best.ckpt", (1e9 - age * 100, 1e9 - age * 100))
    return folder


def ckpt(runs: Path, name: str) -> str:
    return str(runs / "runs" / name / "checkpoints" / "best.ckpt")


@pytest.fixture(scope="module")
def app(runs):
    return serve.create_app(serve.Models(Path(ckpt(runs, "tiny")), runs, torch.device("cpu")), max_length=2000)


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app)


def events(response_text: str) -> list[tuple[str, object]]:
    """The server-sent events of a response body: (name, data) pairs."""
    found = []
    for block in response_text.split("\n\n"):
        if block.strip():
            lines = dict(line.split(": ", 1) for line in block.splitlines())
            found.append((lines["event"], json.loads(lines["data"])))
    return found


def served(response_text: str) -> tuple[str, str, str]:
    """The prompt, the text the page shows (prompt + generated) and the sample.py command of a stream."""
    found = events(response_text)
    assert found[0][0] == "start" and found[-1][0] == "end", found
    prompt = found[0][1]["prompt"]
    return prompt, prompt + "".join(data for name, data in found if name == "text"), found[0][1]["command"]


def sample_py(command: str, capsys) -> str:
    """What sample.py prints for ``command`` (as the shell splits it), run in this process: its own argument
    handling (free text as typed), Hydra's composition of conf/sample.yaml, and its sample()."""
    from hydra import compose, initialize_config_dir

    argv = shlex.split(command)[1:]  # sample.py arg ...
    literal_prompt_overrides(argv, "prompt", "ckpt", "runs_dir", "topic")
    spec = importlib.util.spec_from_file_location("sample_script", ROOT / "sample.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("sample", argv[1:])
    capsys.readouterr()
    script.sample(cfg)
    return capsys.readouterr().out


@pytest.mark.parametrize(
    "name, body",
    [
        ("tiny", dict(prompt="Today ", length=120, temperature=0.9, top_k=12, top_p=0.95, seed=3)),
        ("tiny", dict(prompt="순환 ", length=40, temperature=0, seed=None)),
        ("topics", dict(prompt="today ", length=60, temperature=1.0, seed=7, topic="sports")),
    ],
)
def test_the_served_text_is_sample_py_text(client, runs, name, body, capsys):
    """Same checkpoint, seed and settings: the page's text is what sample.py prints, run with the command
    the page shows under it (a prompt with a trailing space or in Korean, typed in the box, as the shell
    passes it quoted)."""
    response = client.post("/api/generate", json={**body, "ckpt": ckpt(runs, name)})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    prompt, text, command = served(response.text)
    assert prompt == body["prompt"] and len(text) == len(prompt) + body["length"]
    assert sample_py(command, capsys) == text + "\n"


def test_the_text_is_streamed_as_it_is_written(client, runs):
    """The first event carries one character (it shows at once); the text comes in several events."""
    found = events(client.post("/api/generate", json={"prompt": "Today ", "length": 300, "seed": 1}).text)
    texts = [data for name, data in found if name == "text"]
    assert len(texts[0]) == 1 and len(texts) >= 2 and sum(map(len, texts)) == 300


BAD = [
    # what the user did, the request, a part of the one line that answers it
    ("a character the model never saw", {"prompt": "Today \u2603"}, "not in the model's vocabulary"),
    ("an empty prompt", {"prompt": ""}, "prompt is empty"),
    ("an absurd length", {"length": 10**9}, "length=1000000000 is more than this server's max_length=2000"),
    ("a negative length", {"length": -5}, "length=-5 must be a whole number >= 0"),
    ("an empty length box", {"length": None}, "the length is missing; type how many characters to write"),
    ("a length as text", {"length": "300"}, "length='300' must be a whole number >= 0"),
    ("a negative temperature", {"temperature": -1}, "temperature=-1 must be a number >= 0"),
    ("a temperature as text", {"temperature": "hot"}, "temperature='hot' must be a number >= 0"),
    ("top-k 0", {"top_k": 0}, "top_k=0 must be a whole number >= 1"),
    ("top-p above 1", {"top_p": 1.5}, "top_p=1.5 must be in (0, 1]"),
    ("a negative seed", {"seed": -1}, "seed=-1 must be a whole number in 0..4294967295"),
    ("a prompt over the cap", {"prompt": "a" * (serve.MAX_PROMPT + 1)}, "more than this server takes"),
    ("a topic for a model without", {"topic": "Sports"}, "needs a model trained with topics"),
    ("an unknown topic", {"topic": "Cooking", "ckpt": "topics"}, "topic=Cooking is not one of this model's topics"),
    ("an unreadable checkpoint", {"ckpt": "broken"}, "cannot be loaded: it is truncated, corrupt or not a checkpoint"),
    ("a checkpoint not offered", {"ckpt": "/etc/passwd"}, "ckpt=/etc/passwd is not a checkpoint this server offers"),
    (
        "a checkpoint not offered",
        {"ckpt": "/etc/passwd"},
        "serve another folder's runs: python -m charlm.serve runs_dir=",
    ),
    ("a missing checkpoint", {"ckpt": "missing"}, "does not exist"),
]


@pytest.mark.parametrize("what, bad, message", BAD, ids=[row[0] for row in BAD])
def test_bad_input_is_one_line_and_the_server_keeps_serving(client, runs, what, bad, message):
    body = {"prompt": "Today ", "length": 20, "seed": 0, **bad}
    if body.get("ckpt") in ("topics", "broken", "missing"):
        body["ckpt"] = ckpt(runs, body["ckpt"])
    response = client.post("/api/generate", json=body)
    assert response.status_code == 400, (what, response.text)
    error = response.json()["error"]
    assert message in error and "\n" not in error and "Traceback" not in error, (what, error)
    assert "ckpt=/etc" not in error.split("offers", 1)[-1], error  # no suggestion to serve an arbitrary file
    assert client.post("/api/generate", json={"prompt": "Today ", "length": 5}).status_code == 200


@pytest.mark.parametrize(
    "path, body, message",
    [
        ("/api/model", {"ckpt": "broken"}, "cannot be loaded"),
        ("/api/surprisal", {"text": "a"}, "text has 1 character; give at least 2"),
        ("/api/surprisal", {"text": 5}, "text=5 is not text"),
        ("/api/classify", {"text": "today the fox"}, "this checkpoint has no topics"),
        ("/api/classify", {"text": "   ", "ckpt": "topics"}, "the text is empty"),
        ("/api/classify", {"text": "x" * 20_001, "ckpt": "topics"}, "more than this server takes (20,000)"),
    ],
)
def test_bad_input_to_the_other_endpoints_is_one_line(client, runs, path, body, message):
    if body.get("ckpt"):
        body = {**body, "ckpt": ckpt(runs, body["ckpt"])}
    response = client.post(path, json=body)
    assert response.status_code == 400 and message in response.json()["error"], response.text
    not_json = client.post(path, content=b"{not json", headers={"content-type": "application/json"})
    assert not_json.status_code == 400 and not_json.json() == {"error": "the request body is not JSON"}


def test_the_picker_lists_the_runs_newest_first_with_cell_size_and_test_bpc(client, runs, tiny_run):
    data = client.get("/api/runs").json()
    assert [r["run"] for r in data["runs"]] == ["tiny", "topics", "broken"]
    tiny, topics, broken = data["runs"]
    test_bpc = json.loads((tiny_run / "metrics.json").read_text())["test/bpc"]
    assert (tiny["cell"], tiny["layers"], tiny["hidden_size"], tiny["test_bpc"]) == ("lstm", 1, 16, test_bpc)
    assert topics["topics"] == TOPICS and topics["test_bpc"] is None  # no metrics.json: no test
    assert "cannot be loaded" in broken["error"]
    assert data["default"] == ckpt(runs, "tiny") and data["max_length"] == 2000


def test_the_surprisal_view_is_the_inspectors(client, runs, tiny_run):
    """Bits, colours and top-5 guesses of each character: those of charlm.inspect's page for the same text."""
    text = TINY_TEXT[:150]
    view = client.post("/api/surprisal", json={"text": text}).json()
    module = load_checkpoint(tiny_run / "checkpoints" / "best.ckpt")
    inspection = inspect_text(module.net, module.vocab, text)
    assert view["chars"] == list(text) and view["bits"][0] is None
    assert view["bits"][1:] == pytest.approx(inspection.bits[1:].tolist(), abs=1e-3)
    assert view["colors"][5] == serve.hex_color(bits_colors(inspection.bits)[5])
    assert [c for c, _ in view["top"][9]] == [module.vocab.chars[i] for i in inspection.top_ids[9]]
    assert len(view["top"][9]) == TOP_K and view["top"][0] == []


def test_classify_is_charlm_classify(client, runs):
    text = "today the quick brown fox"
    answer = client.post("/api/classify", json={"text": text + " \u2603", "ckpt": ckpt(runs, "topics")}).json()
    expected = classify(load_checkpoint(ckpt(runs, "topics")), text + " \u2603")
    assert list(answer["probabilities"]) == list(expected)  # most likely first
    assert list(answer["probabilities"].values()) == pytest.approx(list(expected.values()), abs=1e-6)
    assert "1 of 27 characters of text (4%) are not in the model's vocabulary" in answer["warning"]


def test_a_checkpoint_is_loaded_once_and_again_when_rewritten(runs, tmp_path):
    copy = tmp_path / "outputs" / "runs" / "a" / "checkpoints" / "best.ckpt"
    copy.parent.mkdir(parents=True)
    shutil.copy(ckpt(runs, "topics"), copy)
    models = serve.Models(Path(ckpt(runs, "tiny")), tmp_path / "outputs", torch.device("cpu"))
    client = TestClient(serve.create_app(models))
    with ThreadPoolExecutor(10) as pool:  # ten pages opening the same checkpoint at once
        answers = list(pool.map(lambda _: client.post("/api/model", json={"ckpt": str(copy)}), range(10)))
    assert [a.status_code for a in answers] == [200] * 10 and models.loads == 1
    client.post("/api/generate", json={"ckpt": str(copy), "prompt": "today ", "length": 5})
    assert models.loads == 1
    os.utime(copy, (time.time() + 10, time.time() + 10))  # retrained: written again
    client.post("/api/model", json={"ckpt": str(copy)})
    assert models.loads == 2 and len(models.loaded) == 1  # the old version is dropped


@contextlib.contextmanager
def serving(app):
    """``app`` served by python -m charlm.serve's uvicorn server on a free port of 127.0.0.1 in a thread
    (1 s of graceful shutdown); the server, its URL and its thread. Ctrl-C stops it at the end."""
    sock = serve.listening_socket("127.0.0.1", 0)
    server = serve.server(app, graceful_seconds=1)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    try:
        yield server, serve.url_of(sock), thread
    finally:
        server.handle_exit(signal.SIGINT, None)  # as Ctrl-C: outside the main thread, nothing is raised again
        thread.join(10)
        sock.close()


@contextlib.contextmanager
def running(app):
    """``app`` served by uvicorn on a free port of 127.0.0.1 in a thread; its URL."""
    with serving(app) as (_, url, _):
        yield url


@pytest.fixture(scope="module")
def live(runs):
    """A real server (uvicorn in a thread) with no practical length cap: its app and URL."""
    app = serve.create_app(serve.Models(Path(ckpt(runs, "tiny")), runs, torch.device("cpu")), max_length=10**7)
    with running(app) as url:
        yield app, url


def test_ten_requests_at_once_are_all_answered(live, tiny_run):
    """Ten streams at once on one model, each its own text: that of its seed alone."""
    _, url = live

    def one(seed):
        response = httpx.post(url + "api/generate", json={"prompt": "Today ", "length": 150, "seed": seed}, timeout=120)
        return response.status_code, served(response.text)[1]

    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(one, range(10)))
    module = load_checkpoint(tiny_run / "checkpoints" / "best.ckpt")
    for seed, (status, text) in enumerate(answers):
        expected = generate_text(module.net, module.vocab, "Today ", 150, temperature=0.8, seed=seed)[0]
        assert status == 200 and text == expected


def test_a_closed_connection_stops_its_generation(live):
    """A closed tab (the connection closed after the first characters): the generator is closed at once,
    long before the 10 million characters asked for."""
    app, url = live
    streams = app.state.streams
    before = len(streams["finished"])
    with httpx.stream("POST", url + "api/generate", json={"prompt": "Today ", "length": 10**7}, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("event: text"):
                break
    deadline = time.time() + 20
    while time.time() < deadline and len(streams["finished"]) == before:
        time.sleep(0.05)
    assert len(streams["finished"]) > before, "the generation went on after the connection closed"
    end = streams["finished"][-1]
    assert end["end"] == "stopped" and end["chars"] < 10**6 and streams["active"] == 0


def test_ctrl_c_while_streams_run_stops_the_server_at_once_and_quietly(runs):
    """Ctrl-C with three long streams running: each ends at once with a line saying why, the server stops
    within its graceful timeout (1 s here; a stream it had to cancel mid-chunk would log), and nothing is
    logged (no 'generator already executing', no traceback)."""
    app = serve.create_app(serve.Models(Path(ckpt(runs, "tiny")), runs, torch.device("cpu")), max_length=10**7)
    logged = logging.handlers.BufferingHandler(10_000)
    answers = {}

    def stream(seed):
        body = {"prompt": "Today ", "length": 10**7, "seed": seed}
        with httpx.stream("POST", url + "api/generate", json=body, timeout=60) as response:
            answers[seed] = "\n".join(response.iter_lines())

    with serving(app) as (server, url, thread):
        logging.getLogger("uvicorn.error").addHandler(logged)
        try:
            clients = [threading.Thread(target=stream, args=(seed,)) for seed in range(3)]
            for client in clients:
                client.start()
            deadline = time.time() + 30
            while app.state.streams["active"] < 3 and time.time() < deadline:
                time.sleep(0.02)
            time.sleep(0.3)  # the streams are writing
            assert app.state.streams["active"] == 3
            start = time.perf_counter()
            server.handle_exit(signal.SIGINT, None)
            thread.join(10)
            stopped_in = time.perf_counter() - start
            for client in clients:
                client.join(10)
        finally:
            logging.getLogger("uvicorn.error").removeHandler(logged)
    # no bound on the time (a loaded machine is slow): a stream still running at the graceful timeout
    # would be cancelled mid-chunk, which the log and the streams' endings below would show
    assert not thread.is_alive(), f"the server had not stopped after {stopped_in:.2f} s"
    assert [record.getMessage() for record in logged.buffer] == []
    assert app.state.streams["active"] == 0
    assert [end["end"] for end in list(app.state.streams["finished"])[-3:]] == ["server stopped"] * 3
    for seed in range(3):
        assert events(answers[seed] + "\n\n")[-1][0] == "error"
        assert "the server was stopped after" in answers[seed]


def test_the_picker_lists_a_deleted_default_checkpoint_as_missing(runs, tmp_path):
    """The checkpoint the server started with, deleted since: the list is still served (not HTTP 500),
    with that entry saying why it cannot be opened."""
    default = tmp_path / "x" / "best.ckpt"
    shutil.copytree(Path(ckpt(runs, "tiny")).parent, default.parent)
    client = TestClient(serve.create_app(serve.Models(default, runs, torch.device("cpu"))))
    assert client.get("/api/runs").status_code == 200
    default.unlink()
    response = client.get("/api/runs")
    assert response.status_code == 200, response.text
    first = response.json()["runs"][0]
    assert first["ckpt"] == str(default) and "does not exist" in first["error"]


def test_the_picker_shows_a_test_bpc_written_after_the_run_was_listed(runs, tmp_path):
    """A run listed while it was still testing: its test bpc shows once its metrics.json is written, not
    only after a restart."""
    run = tmp_path / "outputs" / "runs" / "testing"
    shutil.copytree(Path(ckpt(runs, "tiny")).parent, run / "checkpoints")
    client = TestClient(
        serve.create_app(serve.Models(run / "checkpoints" / "best.ckpt", tmp_path, torch.device("cpu")))
    )
    assert client.get("/api/runs").json()["runs"][0]["test_bpc"] is None
    (run / "metrics.json").write_text(json.dumps({"test/bpc": 2.5}))
    assert client.get("/api/runs").json()["runs"][0]["test_bpc"] == 2.5


def test_a_link_under_runs_dir_to_a_checkpoint_outside_is_neither_listed_nor_read(runs, tmp_path):
    """A symbolic link under runs_dir to a file outside it: not listed (its file is not read for the label)
    and refused when asked for, as any file outside."""
    outside = tmp_path / "outside" / "best.ckpt"
    shutil.copytree(Path(ckpt(runs, "topics")).parent, outside.parent)
    runs_dir = tmp_path / "outputs"
    link = runs_dir / "runs" / "link" / "checkpoints" / "best.ckpt"
    link.parent.mkdir(parents=True)
    link.symlink_to(outside)
    models = serve.Models(Path(ckpt(runs, "tiny")), runs_dir, torch.device("cpu"))
    client = TestClient(serve.create_app(models))
    listed = client.get("/api/runs").json()["runs"]
    assert [row["run"] for row in listed] == ["tiny"]  # the default alone
    refused = client.post("/api/model", json={"ckpt": str(link)})
    assert refused.status_code == 400 and "is not a checkpoint this server offers" in refused.json()["error"]


def test_prepare_refuses_bad_settings_in_one_line(runs, tmp_path):
    """What python -m charlm.serve refuses before serving: an unreadable default checkpoint, no run to
    open, a port in use, a bad max_length."""

    def cfg(**kw):
        base = OmegaConf.load(CONF_DIR / "serve.yaml")
        base.pop("defaults"), base.pop("hydra")
        return OmegaConf.merge(base, {"port": 0, **kw})

    with pytest.raises(UserError, match="cannot be loaded: it is truncated"):
        serve.prepare(cfg(ckpt=ckpt(runs, "broken")))
    with pytest.raises(UserError, match=f"no checkpoints/best.ckpt under runs_dir={tmp_path}"):
        serve.prepare(cfg(runs_dir=str(tmp_path)))
    with pytest.raises(UserError, match="max_length=0 must be a whole number >= 1"):
        serve.prepare(cfg(max_length=0))
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=f"host=127.0.0.1 port={port} cannot be listened on") as refused:
            serve.prepare(cfg(ckpt=ckpt(runs, "tiny"), port=port))
        assert str(refused.value).endswith("pass another port= (port=0: any free one)")  # host=127.0.0.1 is it
    with pytest.raises(UserError, match="port=70000 must be a whole number in 0..65535"):
        serve.prepare(cfg(ckpt=ckpt(runs, "tiny"), port=70000))
    app, sock, notes = serve.prepare(cfg(runs_dir=str(runs)))
    sock.close()
    assert notes == [f"no ckpt given: using the newest run's {ckpt(runs, 'tiny')}"]


def test_without_the_serve_extra_one_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "starlette" else real(name, *a))
    with pytest.raises(UserError) as refused:
        serve.needs_extra()
    assert str(refused.value) == (
        'python -m charlm.serve needs starlette, which is not installed: pip install -e ".[serve]"'
    )


def test_the_playgrounds_lines_are_in_the_docs(runs, monkeypatch):
    """docs/reliability.md's playground table shows the exact lines (start-up refusals and the page's own)."""
    docs = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    client = TestClient(serve.create_app(serve.Models(Path(ckpt(runs, "tiny")), runs, torch.device("cpu"))))
    lines = [
        client.post("/api/generate", json={"prompt": "Today ", "length": 100000}).json()["error"],
        client.post("/api/generate", json={"prompt": "a" * 5001}).json()["error"],
        client.post("/api/generate", json={"prompt": "Today ", "length": None}).json()["error"],
        client.post("/api/surprisal", json={"text": "a" * 20001}).json()["error"],
        client.post("/api/classify", json={"text": " ", "ckpt": ckpt(runs, "topics")}).json()["error"],
        client.post("/api/model", content=b"{", headers={"content-type": "application/json"}).json()["error"],
    ]
    for call in (
        lambda: serve.listening_socket("127.0.0.1", 70000),
        lambda: serve.prepare(OmegaConf.create({"max_length": 0})),
    ):
        with pytest.raises(UserError) as refused:
            call()
        lines.append(f"error: {refused.value}")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(UserError) as refused:
        serve.needs_extra()
    lines.append(f"error: {refused.value}")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(UserError) as refused:
            serve.listening_socket("127.0.0.1", port)
    lines.append(f"error: {refused.value}".replace(f"port={port}", "port=8000"))
    assert [line for line in lines if f"`{line}`" not in docs] == []


@pytest.mark.slow
def test_the_command_prints_the_url_serves_and_stops_on_ctrl_c(runs):
    """python -m charlm.serve as a user starts it: no override (the newest run under runs_dir), the URL on
    stdout, the page and a stream served there, and Ctrl-C stops it with exit status 0."""
    import signal
    import subprocess
    import sys

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    cwd = runs.parent  # holds outputs/: runs_dir's default
    server = subprocess.Popen(
        [sys.executable, "-m", "charlm.serve", "port=0"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = server.stdout.readline()
        assert line.startswith("charlm playground: open http://127.0.0.1:"), (line, server.stderr.read())
        url = line.split("open ", 1)[1].split()[0]
        assert "charlm playground" in httpx.get(url, timeout=30).text
        answer = httpx.post(url + "api/generate", json={"prompt": "Today ", "length": 30, "seed": 0}, timeout=60)
        assert served(answer.text)[1].startswith("Today ")
    finally:
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=30)
    assert server.returncode == 0, err
    assert err.startswith("note: no ckpt given: using the newest run's outputs/runs/tiny/checkpoints/best.ckpt")
