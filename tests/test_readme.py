"""The documentation as a newcomer uses it.

- Every ``python sample.py ...`` command of a fenced bash block in README.md and docs/sampling.md runs
  as written, through bash, against one tiny model, and prints the prompt bash and Hydra make of it:
  ``'prompt="Today "'`` must print ``Today `` with its trailing space. The one substitution is the
  placeholder ``<run>`` (a run folder's name), which bash would read as a redirection.
- The quoting table of docs/sampling.md: each typed form goes through bash and what sample.py does with
  it before and in Hydra (``literal_prompt_overrides``, then Hydra's override parser).
- Every relative link of README.md and docs/ points to an existing file (and heading)."""

import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from charlm.config import literal_prompt_overrides

from conftest import ROOT, run_script

README = ROOT / "README.md"
SAMPLING = ROOT / "docs" / "sampling.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
RUN = "tiny"  # replaces the placeholder <run> in the commands
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # a tiny model gains nothing from more; two processes share 2 cores


def bash_commands(path: Path, program: str = "python sample.py") -> list[str]:
    """The commands of ``path``'s ```bash blocks that start with ``program``, continuation lines joined."""
    commands, in_bash, pending = [], False, ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_bash = line.strip() == "```bash"
            continue
        if not in_bash:
            continue
        pending += line
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        if pending.startswith(program + " "):
            commands.append(pending)
        pending = ""
    return commands


DOC_COMMANDS = [(path.relative_to(ROOT).as_posix(), cmd) for path in (README, SAMPLING) for cmd in bash_commands(path)]


def substitute(cmd: str) -> str:
    cmd = cmd.replace("<run>", RUN)
    assert "<" not in cmd.split("#")[0] and ">" not in cmd.split("#")[0], f"a placeholder bash would redirect: {cmd}"
    return cmd


def bash_argv(cmd: str) -> list[str]:
    """The arguments bash passes to ``python`` for ``cmd``: bash runs it with ``python`` a stub."""
    stub = 'python() { printf "%s\\0" "$@"; }\n'
    out = subprocess.run(["/bin/bash", "-c", stub + cmd], capture_output=True, check=True).stdout
    return out.decode("utf-8").split("\0")[:-1]


def hydra_values(args: list[str]) -> dict:
    """What Hydra's override parser makes of the arguments: key -> value."""
    return {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(args)}


def expected_output(cmd: str) -> tuple[str, int]:
    """The prompt the command asks for, as bash and Hydra pass it, and the number of samples."""
    argv = bash_argv(substitute(cmd))
    assert argv[0] == "sample.py", argv
    literal_prompt_overrides(argv, "prompt")  # as sample.py does before Hydra reads the arguments
    values = {**OmegaConf.load(ROOT / "conf" / "sample.yaml"), **hydra_values(argv[1:])}
    # null: the default prompt, "today " for the tiny model (its vocabulary has those characters)
    return values["prompt"] if values["prompt"] is not None else "today ", values["num_samples"]


def meant_prompt(cmd: str) -> str | None:
    """The prompt as a reader takes it: the text inside the quotes after ``prompt=`` (None: no prompt)."""
    found = re.search(r"""prompt=(?:"([^"]*)"|'([^']*)'|([^\s'"]+))""", cmd)
    return None if found is None else next(group for group in found.groups() if group is not None)


@pytest.fixture(scope="module")
def workdir(tiny_run, tmp_path_factory) -> Path:
    """A folder laid out as the docs assume: sample.py, conf/ and outputs/runs/<run>/ (the session's tiny
    model, trained on a text with every character of the documented prompts)."""
    work = tmp_path_factory.mktemp("readme")
    shutil.copytree(tiny_run, work / "outputs" / "runs" / RUN)
    assert (work / "outputs" / "runs" / RUN / "checkpoints" / "best.ckpt").exists()
    (work / "sample.py").symlink_to(ROOT / "sample.py")
    (work / "conf").symlink_to(ROOT / "conf")
    return work


@pytest.fixture(scope="module")
def ran(workdir) -> dict[str, subprocess.CompletedProcess]:
    """Every documented sampling command with the arguments bash passes (``bash_argv``: bash itself
    parses the line), run in ``workdir`` two at a time; a command documented twice (the same
    arguments) runs once."""

    def run(argv):
        assert argv[0] == "sample.py", argv  # one command, no pipe or redirection: bash starts python with argv
        return run_script(*argv, cwd=workdir, env=ONE_THREAD)

    unique = {tuple(bash_argv(substitute(cmd))) for _, cmd in DOC_COMMANDS}
    with ThreadPoolExecutor(2) as pool:
        results = dict(zip(unique, pool.map(run, unique)))
    return {cmd: results[tuple(bash_argv(substitute(cmd)))] for _, cmd in DOC_COMMANDS}


def test_the_docs_have_sampling_commands():
    readme = [cmd for page, cmd in DOC_COMMANDS if page == "README.md"]
    assert len(readme) >= 2 and any("<run>" in cmd for cmd in readme)
    assert any("'prompt=\"Today \"'" in cmd for cmd in readme)
    assert any("'prompt=\"순환\"'" in cmd for page, cmd in DOC_COMMANDS if page == "docs/sampling.md")


@pytest.mark.parametrize("page, cmd", DOC_COMMANDS, ids=[f"{p}:{c[:60]}" for p, c in DOC_COMMANDS])
def test_sampling_command_runs_as_written(ran, page, cmd):
    result = ran[cmd]
    assert result.returncode == 0, f"{page}: {cmd}\n{result.stderr[-2000:]}"
    prompt, num_samples = expected_output(cmd)
    assert isinstance(prompt, str) and prompt
    assert meant_prompt(cmd) in (None, prompt), f"{page}: the shell and Hydra turn the prompt into {prompt!r}"
    if num_samples == 1:
        texts = [result.stdout]
    else:
        texts = re.split(r"--- sample \d+\n", result.stdout)[1:]
        assert len(texts) == num_samples, result.stdout
    for text in texts:
        assert text.startswith(prompt) and len(text.rstrip("\n")) > len(prompt), (prompt, text)


def test_a_trailing_space_typed_in_shell_quotes_is_kept():
    cmd = 'python sample.py prompt="Today " length=5'  # what the README used to say: Hydra alone trims it
    assert hydra_values(bash_argv(cmd)[1:])["prompt"] == "Today"
    assert meant_prompt(cmd) == "Today " and expected_output(cmd)[0] == "Today "
    assert meant_prompt("python sample.py 'prompt=\"Today \"' length=5") == "Today "


# docs/sampling.md's quoting table: typed in bash -> what the program receives -> the prompt
QUOTING = [
    ('prompt="Today "', "prompt=Today ", "Today "),
    ("'prompt=\"Today \"'", 'prompt="Today "', "Today "),
    ("\"prompt='Today '\"", "prompt='Today '", "Today "),
    ("prompt=순환", "prompt=순환", "순환"),
    ("prompt=café", "prompt=café", "café"),
    ("'prompt=\"순환\"'", 'prompt="순환"', "순환"),
    ("prompt=today,Today", "prompt=today,Today", "today,Today"),
    ("'prompt=Hello, world'", "prompt=Hello, world", "Hello, world"),
    ("prompt=1", "prompt=1", "1"),
    ('"prompt=\\"It\'s \\""', 'prompt="It\'s "', "It's "),
    ('\'prompt="say \\"hi\\" "\'', 'prompt="say \\"hi\\" "', 'say "hi" '),
    ("'prompt=\"a\\nb\"'", 'prompt="a\\nb"', "a\\nb"),
    ("$'prompt=\"\\nToday \"'", 'prompt="\nToday "', "\nToday "),
    ("prompt=null", "prompt=null", None),
]


@pytest.mark.parametrize("typed, received, prompt", QUOTING, ids=[q[0] for q in QUOTING])
def test_quoting_table(typed, received, prompt):
    assert f"| `{typed}` |" in SAMPLING.read_text(encoding="utf-8")  # the row is in the table
    argv = bash_argv(f"python sample.py {typed}")
    assert argv == ["sample.py", received]
    literal_prompt_overrides(argv, "prompt")
    (override,) = OverridesParser.create().parse_overrides(argv[1:])
    assert override.value() == prompt


def test_interpolation_is_escaped_with_a_backslash():
    (override,) = OverridesParser.create().parse_overrides(bash_argv("python sample.py 'prompt=\"\\${x}\"'")[1:])
    assert OmegaConf.create({"prompt": override.value()}).prompt == "${x}"


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found, seen, in_code = set(), {}, False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            base = slug(line.lstrip("#"))
            found.add(base if base not in seen else f"{base}-{seen[base]}")
            seen[base] = seen.get(base, 0) + 1
    return found


LINKED = [*PAGES, *sorted((ROOT / "docs" / "results").glob("*/*.md"))]


@pytest.mark.parametrize("page", LINKED, ids=[p.relative_to(ROOT).as_posix() for p in LINKED])
def test_relative_links_point_to_existing_files(page):
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links or page.parent.parent.name == "results"
    for link in links:
        if re.match(r"[a-z]+:", link):  # http:, https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        file = (page.parent / target).resolve() if target else page
        assert file.exists(), f"{page.relative_to(ROOT)}: {link} -> no such file"
        if anchor:
            assert file.suffix == ".md" and anchor in anchors(file), (
                f"{page.relative_to(ROOT)}: {link} -> no such heading"
            )


@pytest.mark.parametrize("page", PAGES[1:], ids=[p.name for p in PAGES[1:]])
def test_each_page_starts_with_a_title_a_summary_and_a_back_link(page):
    title, blank, *rest = page.read_text(encoding="utf-8").splitlines()
    assert title.startswith("# ") and blank == "" and rest[0]
    assert "](../README.md)" in "\n".join(rest[:4])


TRAIN_COMMANDS = [
    cmd
    for cmd in bash_commands(README, "python train.py")
    + [c.replace(".venv/bin/python", "python", 1) for c in bash_commands(README, ".venv/bin/python train.py")]
]


def test_the_readme_has_training_commands():
    assert len(TRAIN_COMMANDS) >= 8 and any(" -m " in cmd for cmd in TRAIN_COMMANDS)


@pytest.mark.parametrize("cmd", TRAIN_COMMANDS, ids=[c.split("#")[0].strip()[16:70] for c in TRAIN_COMMANDS])
def test_training_command_composes_as_written(cmd, tmp_path):
    """Each training command of the README, as bash passes it (placeholders filled in), composes the
    config train.py would run (in this process: no training), and every key=value it sets is in it. A
    sweep (``-m``) is composed for its first job."""
    from charlm.config import compose_config

    args = bash_argv(substitute(cmd.split("#")[0]).strip())[1:]
    if "-m" in args:
        args = [arg.split(",")[0] if "=" in arg else arg for arg in args if arg != "-m"]
    composed = compose_config(args, tmp_path)
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and "." in key and not key.startswith("hydra"):
            assert str(OmegaConf.select(composed, key)).lower() == value.lower(), (cmd, key)


def test_the_readme_promises_what_a_new_user_meets():
    """What the README says of a Korean prompt and of greedy decoding holds on the default model: a
    prompt in Hangul needs a model trained on Korean text (AG News has no Hangul), and greedy decoding
    repeats itself until the model is well trained; each README line that shows it says so."""
    text = " ".join(README.read_text(encoding="utf-8").split())
    korean = text.index("prompt=순환")
    assert "trained on Korean text" in text[korean : korean + 100]
    greedy = [line for line in README.read_text(encoding="utf-8").splitlines() if "temperature=0 " in line]
    assert greedy and all("until well trained" in line or "until the model is well trained" in line for line in greedy)
