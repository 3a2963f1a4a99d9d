"""Each entry point's ``--help`` (Hydra's ``hydra.help.template``, ``conf/hydra/help/``): a short
description first, the command's own settings one line each, three example commands, and no training
config groups in the help of the commands that read a checkpoint; a training setting given to one of
those is refused in one line, instead of Hydra's advice to add it with ``+``."""

import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from charlm.config import CONF_DIR, command_line, refuse_training_overrides, register_resolvers
from charlm.errors import UserError

from conftest import ROOT, run_script

# config name -> the command as typed
COMMANDS = {
    "config": "python train.py",
    "sample": "python sample.py",
    "classify": "python -m charlm.classify",
    "inspect": "python -m charlm.inspect",
    "eval": "python eval.py",
    "serve": "python -m charlm.serve",
}
TRAINING_GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra")


def help_text(config_name: str, overrides=()) -> str:
    """What ``--help`` prints: the composed ``hydra.help.template`` (charlm's templates use none of
    Hydra's ``$`` placeholders, so Hydra prints the template as composed)."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    template = cfg.hydra.help.template
    assert "$" not in template
    return template


def section(text: str, title: str) -> list[str]:
    """The lines of the section that starts with ``title`` (up to the next blank line)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    body = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        body.append(line)
    return body


@pytest.mark.parametrize("config_name", COMMANDS)
def test_help_starts_with_a_description_lists_settings_and_three_examples(config_name):
    text = help_text(config_name)
    command = COMMANDS[config_name]
    name = command.split()[-1]
    assert text.startswith(f"{name}: ") and len(text.splitlines()) <= 40
    settings = section(text, "Settings")
    assert settings and all(re.match(r"  \S+=\S*\s+\S", line) for line in settings), settings
    examples = section(text, "Examples")
    assert len(examples) == 3 and all(line.startswith(f"  {command} ") for line in examples)
    if config_name == "config":
        groups = section(text, "Config groups")
        assert {line.split("=")[0].strip() for line in groups} == set(TRAINING_GROUPS) - {"callbacks"}
        return
    # a command that reads a checkpoint: every key of its config, one line each, and no training group but its own
    # (eval.py's data)
    keys = set(OmegaConf.load(CONF_DIR / f"{config_name}.yaml")) - {"defaults", "hydra"}
    assert sorted(line.split("=")[0].strip() for line in settings) == sorted(keys)
    assert "Configuration groups" not in text and "$APP_CONFIG_GROUPS" not in text
    others = "|".join(sorted(set(TRAINING_GROUPS) - keys))
    assert not [line for line in text.splitlines() if re.match(rf"\s*({others})[=:.]", line)]


def test_train_help_gives_the_values_of_this_command():
    assert "model.hidden_size=N        units per layer (now: 64)" in help_text("config", ["experiment=lesson"])


@pytest.mark.parametrize("config_name", ["sample", "classify", "inspect", "eval", "serve"])
@pytest.mark.parametrize(
    "arg",
    [
        "model=gru",
        "+model=gru",
        "trainer.max_steps=5",
        "+trainer.max_steps=5",
        "~callbacks",
        "ckpt_path=x.ckpt",
        "data.path=a.txt",
        "experiment=lesson",
    ],
)
def test_a_training_setting_is_refused_in_one_line(config_name, arg):
    command = COMMANDS[config_name]
    if config_name == "eval" and arg.startswith("data."):  # eval.py's own: the corpus to score on
        refuse_training_overrides([command, "ckpt=x", arg], command, config_name)
        return
    with pytest.raises(UserError) as refused:
        refuse_training_overrides([command, "ckpt=x", arg], command, config_name)
    assert str(refused.value) == (
        f"{arg} is a training setting (train.py); {command.split()[-1]} reads the model "
        f"from its checkpoint: pass ckpt=PATH ({command} --help lists its settings)"
    )


@pytest.mark.parametrize("config_name", ["sample", "classify", "inspect", "eval", "serve"])
def test_the_commands_own_settings_pass(config_name):
    """Every key of the command's config (sample.py's seed= too, though train.py has one), flags and
    Hydra's keys pass the check, whatever their values."""
    keys = [key for key in OmegaConf.load(CONF_DIR / f"{config_name}.yaml") if key not in ("defaults", "hydra")]
    refuse_training_overrides(
        ["x", "--help", "-m", "hydra.run.dir=.", *[f"{key}=model=gru" for key in keys]],
        COMMANDS[config_name],
        config_name,
    )


@pytest.mark.slow
def test_the_real_commands(tmp_path):
    """sample.py --help and a training setting given to sample.py, as a user types them."""
    commands = [("--help",), ("model=gru",)]
    with ThreadPoolExecutor(2) as pool:
        shown, refused = pool.map(lambda args: run_script(ROOT / "sample.py", *args, cwd=tmp_path), commands)
    assert shown.returncode == 0 and shown.stdout.startswith("sample.py: write text"), shown.stderr
    assert shown.stdout.strip() == help_text("sample").strip()
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr == (
        "error: model=gru is a training setting (train.py); sample.py reads the model from its "
        "checkpoint: pass ckpt=PATH (python sample.py --help lists its settings)\n"
    )


def test_command_line_takes_free_text_as_typed_after_the_check():
    argv = ["classify", "text=Oil prices rise, dollar weakens", "text_file=it's.txt", "device=cpu"]
    command_line(argv, "python -m charlm.classify", "classify", "text", "text_file")
    assert argv == ["classify", "text='Oil prices rise, dollar weakens'", "text_file='it\\'s.txt'", "device=cpu"]
