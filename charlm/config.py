"""Hydra/OmegaConf glue shared by train.py and sample.py."""

from __future__ import annotations

import logging
import math
import os
import re
import tempfile
import time
import warnings
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from charlm.errors import UserError, exit_on_user_error
from charlm.rundirs import note_created

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def sqrt_scaled_lr(base_lr: float, base_batch: int, batch: int) -> float:
    """The learning rate for ``batch`` windows per step, from ``base_lr`` tuned at ``base_batch``:
    square-root scaling, the rule for Adam-type optimizers (Malladi et al. 2022, "On the SDEs and
    scaling rules for adaptive gradient algorithms"; Hoffer et al. 2017 for the noise argument).
    It keeps the gradient noise of an update about the same, where SGD's linear rule (Goyal et
    al. 2017) would overshoot with Adam, whose step size does not grow with the gradient."""
    return round(base_lr * (batch / base_batch) ** 0.5, 6)


def job_dirname(overrides, exclude_keys, digits=None) -> str:
    """A sweep job's folder name: its overrides in command-line order, without ``exclude_keys``
    (``SweptKeys`` puts there every key that is the same in all the sweep's jobs), each key without
    its config group (``model.cell=gru`` -> ``cell=gru``) unless two keys would then read the same,
    e.g. ``cell=gru,layers=2``. With ``digits``, decimals are rounded to that many significant
    digits (``lr=0.0012``), for Optuna's suggestions, whose folders are numbered anyway.

    Hydra's own ``${hydra:job.override_dirname}`` keeps the full keys and sorts them."""
    kept = [o for o in OverridesParser.create().parse_overrides(list(overrides)) if o.key_or_group not in exclude_keys]
    short = [o.key_or_group.split(".", 1)[-1] for o in kept]
    parts = []
    for o, key in zip(kept, short):
        value = o.value()
        if digits is not None and isinstance(value, float):
            text = f"{o.key_or_group}={value:.{int(digits)}g}"
        else:
            text = o.input_line
        parts.append(text.replace(o.key_or_group, key if short.count(key) == 1 else o.key_or_group, 1))
    return ",".join(parts) or "defaults"


EXCLUDE_KEYS_OVERRIDE = "hydra.job.config.override_dirname.exclude_keys="


def swept_keys(task_overrides, sweeper_params) -> tuple[set[str], set[str]]:
    """The keys a multirun sweeps (a ``,`` list or a sweep function such as ``choice(...)`` or
    ``interval(...)``, on the command line or in ``hydra.sweeper.params``) and the keys it sets
    to one value. A command-line value replaces the key's ``hydra.sweeper.params`` entry."""
    parser = OverridesParser.create()
    sweeps = {
        key: parser.parse_override(f"{key}={value}").is_sweep_override()
        for key, value in (sweeper_params or {}).items()
    }
    sweeps.update({o.key_or_group: o.is_sweep_override() for o in parser.parse_overrides(list(task_overrides))})
    return {key for key, swept in sweeps.items() if swept}, {key for key, swept in sweeps.items() if not swept}


class SweptKeys(Callback):
    """Names a multirun's job folders (and so TensorBoard's run names) by what differs between
    its jobs: the keys it sets to one value join ``hydra.job.config.override_dirname.exclude_keys``,
    which ``job_dirname`` leaves out.

    A job's config only holds that job's values, so which keys are swept is known only here, at
    the start of the multirun. Hydra composes each job's config from the multirun's
    ``hydra.overrides.hydra`` again (also for a SLURM launcher), so the list travels as one more
    override there; the same command (e.g. with ``resume=true``) gives the same folder names."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        # the overrides as typed: one such as logger.csv.save_dir='${hydra:runtime.output_dir}/csv' is
        # resolved in each job, and cannot be here (HydraConfig is not set before the jobs)
        given = OmegaConf.to_container(config.hydra.overrides, resolve=False)
        _, constant = swept_keys(given["task"], config.hydra.sweeper.get("params"))
        exclude = list(config.hydra.job.config.override_dirname.exclude_keys)
        exclude += sorted(constant - set(exclude))
        with read_write(config.hydra):
            overrides = [o for o in given["hydra"] if not o.startswith(EXCLUDE_KEYS_OVERRIDE)]
            config.hydra.overrides.hydra = [*overrides, EXCLUDE_KEYS_OVERRIDE + "[" + ",".join(exclude) + "]"]


# Overrides that say where, not what: left out of run folder names
PLACE_KEYS = ("resume", "ckpt_path", "data.cache_dir", "runs_dir")


def run_name(overrides) -> str:
    """What a run's command line sets, as the start of its folder name: ``layers-3+cell-gru`` (keys
    without their config group, as in sweep job folders; a path reduced to its file name; at most
    60 characters, whole settings only), so that TensorBoard, which shortens run names from the end,
    tells runs apart by their settings. No ``=`` or ``,``: a path with those must be quoted for Hydra
    (``ckpt=``, ``resume=``)."""
    try:
        parsed = OverridesParser.create().parse_overrides([o for o in overrides or () if not o.startswith("hydra.")])
    except Exception:  # noqa: BLE001 - not in Hydra's grammar: Hydra itself will say so
        return ""
    kept = [o for o in parsed if o.key_or_group not in PLACE_KEYS]
    short = [o.key_or_group.split(".", 1)[-1] for o in kept]
    parts = []
    for o, key in zip(kept, short):
        value = o.input_line.split("=", 1)[1] if "=" in o.input_line else ""
        value = Path(value.strip("'\"")).name if "/" in value else value
        parts.append(re.sub(r"[^\w.@%~-]", "_", f"{key if short.count(key) == 1 else o.key_or_group}-{value}"))
    while len("+".join(parts)) > 60:
        parts.pop()
    return "+".join(parts)


def run_dir(resume, overrides=None) -> str:
    """The run folder: ``resume`` when it names one, else a new
    ``outputs/runs/<settings>_<date>_<time>_<pid>`` (``run_name``; the process id keeps runs
    started in the same second apart)."""
    if isinstance(resume, str) and resume not in ("true", "false"):
        return resume
    settings = run_name(overrides)
    return f"outputs/runs/{settings + '_' if settings else ''}" + time.strftime("%Y-%m-%d_%H-%M-%S_") + str(os.getpid())


def steps_for_chars(chars, batch_size: int, nchars: int, devices=1, num_nodes=1) -> int:
    """``${steps_for_chars:chars,batch_size,nchars,devices,num_nodes}``: the optimizer steps that
    train on ``chars`` characters, ``ceil(chars / (batch_size * nchars * devices * num_nodes))``
    (a step trains ``batch_size`` windows of ``nchars`` on every device); a ``devices`` that is not
    a whole number (``auto``, a list) counts as 1. For equal-characters budgets (``sweep=equal_chars``)."""
    devices = devices if isinstance(devices, int) and devices > 0 else 1
    num_nodes = num_nodes if isinstance(num_nodes, int) and num_nodes > 0 else 1
    return max(1, math.ceil(float(chars) / (batch_size * nchars * devices * num_nodes)))


def writable_dir(path: str | Path, key: str) -> Path:
    """The folder ``path`` (config value ``key``), created if needed, after checking that a file
    can be written in it; else a ``UserError`` naming it. Checked by writing, since permission
    bits do not stop root and a path under a regular file or in ``/proc`` fails either way."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as err:
        raise UserError(f"{key}={path} is not a writable folder ({err.strerror}); pass one you can write to") from None
    return path


def check_resume_folder(resume) -> None:
    """``resume=<folder>`` must name a folder that exists: it becomes the run folder, and a mistyped
    one would otherwise be created (empty, but for the log of the refusal) before train.py finds
    no checkpoint in it."""
    if isinstance(resume, str) and resume not in ("true", "false") and not Path(resume).is_dir():
        raise UserError(
            f"resume={resume} does not exist; pass the folder of a run that saved checkpoints/last.ckpt, "
            "e.g. resume=outputs/runs/<run>"
        )


class OutputDirCheck(Callback):
    """Creates the run (or sweep) folder before Hydra does, so one that cannot be written gives
    one line ``error: hydra.run.dir=...`` and exit status 2 instead of Hydra's traceback; a
    ``resume=`` folder that does not exist is refused before anything is created."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        note_created(config.hydra.run.dir)  # a new folder is removed again if the run is refused (charlm.rundirs)
        with exit_on_user_error():
            check_resume_folder(config.get("resume"))
            writable_dir(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        with exit_on_user_error():
            writable_dir(config.hydra.sweep.dir, "hydra.sweep.dir")


class ThreadsPerJob(Callback):
    """Under a launcher that runs several jobs side by side on this machine (``hydra/launcher=parallel``,
    joblib), each job gets its share of the CPU cores (``torch.set_num_threads``), so N jobs do not
    each start one thread per core and slow each other down. joblib's loky workers get the same
    limit through ``OMP_NUM_THREADS``; this makes it explicit and holds for any joblib backend."""

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        launcher = config.hydra.launcher
        if "joblib" not in str(launcher.get("_target_", "")).lower():
            return
        import torch

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        jobs = launcher.n_jobs if launcher.n_jobs and launcher.n_jobs > 0 else cores
        torch.set_num_threads(max(1, cores // jobs))


def register_resolvers() -> None:
    """``${pid:}`` (unique sweep folders), ``${run_dir:resume}`` (run folders),
    ``${job_dirname:overrides,exclude_keys}`` (sweep job folders), ``${steps_for_chars:...}`` (character
    budgets) and ``${sqrt_scaled_lr:base_lr,base_batch,batch}`` (the GPU preset's learning rate)."""
    if not OmegaConf.has_resolver("run_dir"):
        OmegaConf.register_new_resolver("run_dir", run_dir, use_cache=True)
    if not OmegaConf.has_resolver("pid"):
        OmegaConf.register_new_resolver("pid", lambda: os.getpid(), use_cache=True)
    if not OmegaConf.has_resolver("job_dirname"):
        OmegaConf.register_new_resolver("job_dirname", job_dirname)
    if not OmegaConf.has_resolver("sqrt_scaled_lr"):
        OmegaConf.register_new_resolver("sqrt_scaled_lr", sqrt_scaled_lr)
    if not OmegaConf.has_resolver("steps_for_chars"):
        OmegaConf.register_new_resolver("steps_for_chars", steps_for_chars)


def compose_config(overrides: list[str], output_dir: Path) -> DictConfig:
    """The config ``train.py`` would run with ``overrides``, writing into ``output_dir``, for
    building a job in-process (benchmarks, tests) with ``charlm.training.build``."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(CONF_DIR.parent)
    HydraConfig.instance().set_config(cfg)
    return cfg


# Lightning's console lines that tell a charlm user nothing: its advertisements, and accelerator
# lines that charlm's own "run folder" line replaces (it names the device actually used).
NOISE_LINES = ("💡 Tip:", "GPU available:", "TPU available:", "HPU available:")
# Warnings about Lightning's internals, or that do not apply to charlm.
NOISE_WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning's own use of a torch API, once per rank
    # charlm logs by global step (across epochs), so a corpus with fewer batches than
    # log_every_n_steps still gets its points; Lightning's advice to lower it does not apply.
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    # charlm.data.CharDataModule saves and restores the position in the data itself (its
    # state_dict), which Lightning's check for a resumable DataLoader does not see.
    r".*your dataloader is not resumable",
    # resume= continues a run in its own folder, so its checkpoints/ is expected to hold the run's
    # checkpoints; each run folder is new otherwise (named with the time and the process id).
    r"Checkpoint directory .* exists and is not empty",
)


def _not_noise(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(NOISE_LINES)


def quiet_known_noise() -> None:
    """Drop ``NOISE_LINES`` and ``NOISE_WARNINGS``: what a person reads on the console and in
    train.log is charlm's and Lightning's informative lines only. Safe to call more than once."""
    for message in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _not_noise not in logger.filters:
            logger.addFilter(_not_noise)


class ConsoleLines(logging.Filter):
    """The console handler's filter (conf/hydra/default.yaml): warnings and errors from anyone, and
    charlm's informative lines, but not those logged with ``extra={"console": False}`` nor the notes
    of Lightning and of the token cache (seed set, checkpoint restored, corpus encoded: train.log
    keeps them). A run then starts with two short lines and ends with its summary."""

    FILE_ONLY = ("lightning", "charlm.cache")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return getattr(record, "console", True) and not any(
            record.name == name or record.name.startswith(name + ".") for name in self.FILE_ONLY
        )


class ConsoleFormatter(logging.Formatter):
    """The console's lines: the message alone; a warning or an error says so first."""

    def format(self, record: logging.LogRecord) -> str:
        text, level = super().format(record), record.levelname.lower()
        return text if record.levelno < logging.WARNING or text.startswith(f"{level}:") else f"{level}: {text}"


def route_lightning_logs() -> None:
    """Send Lightning's console messages through the root logger, so Hydra writes them to
    ``<run>/train.log`` too (Lightning installs its own handler when imported first), without
    ``NOISE_LINES``."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    quiet_known_noise()


def separate_rank_logs() -> None:
    """Under torchrun or srun every rank runs Hydra with the same job name, so all would append to
    the run's ``train.log``; ranks other than 0 write ``train_rank<N>.log`` instead. (Ranks that
    Lightning starts itself get their own job name, ``train_ddp_process_<N>``.)"""
    from lightning.pytorch.utilities import rank_zero_only

    if not rank_zero_only.rank:
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).name == "train.log":
            own = logging.FileHandler(Path(handler.baseFilename).with_name(f"train_rank{rank_zero_only.rank}.log"))
            own.setFormatter(handler.formatter)
            root.removeHandler(handler)
            handler.close()
            root.addHandler(own)


def literal_prompt_overrides(argv: list[str], *keys: str) -> None:
    """Take the command line's ``key=VALUE`` for each of ``keys`` (free text: a prompt, a text to
    classify or inspect, a path, a topic's name) as typed, editing ``argv`` in place before Hydra
    reads it.

    Hydra's override grammar trims the spaces around an unquoted value (``prompt="Today "`` in
    a shell reaches Hydra as ``prompt=Today `` and becomes ``'Today'``), reads ``a,b`` as a sweep
    and ``123`` as a number, and refuses most non-ASCII letters and quotes (``Sudan's``) with a
    multi-line lexer error. Free text is text, so such a value is handed to Hydra quoted, meaning
    exactly the characters typed. Left as they are: a value Hydra reads as that very text, one
    already quoted for Hydra (``'prompt="Today "'``), ``null`` (the default) and one holding an
    interpolation ``${...}``."""
    parser = OverridesParser.create()

    def value_of(override: str):
        try:
            return parser.parse_override(override).value()
        except Exception:  # noqa: BLE001 - Hydra's OverrideParseException: not in its grammar
            return None

    for i, arg in enumerate(argv[1:], start=1):
        name, sep, value = arg.partition("=")
        if not sep or name.lstrip("+") not in keys or value == "null" or "${" in value:
            continue
        read = value_of(arg)
        if isinstance(read, str) and (read == value or value[:1] in ("'", '"')):
            continue  # Hydra reads it as typed, or it is quoted for Hydra
        # In a quoted value a backslash escapes only a quote or the backslashes before one.
        escaped = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), value)
        if value_of(f"{name}='{escaped}'") == value:
            argv[i] = f"{name}='{escaped}'"


TRAINING_ONLY_ROOTS = ("ckpt_path", "resume", "test")  # config.yaml's own keys besides its groups and seed


def refuse_training_overrides(argv: list[str], command: str, config_name: str) -> None:
    """Refuse, in one line, an override of a training setting (``model=gru``, ``+trainer.max_steps=5``,
    ``ckpt_path=...``) given to ``command`` (``python sample.py``), whose config ``config_name`` does not
    have it: Hydra would say ``Could not override 'model'`` and advise ``+model=gru``, which loads the
    group only to ignore it, as the model comes from the checkpoint. Training settings are train.py's
    config groups (the folders of ``conf/``) and its own keys; the command's own keys (``seed``) are its own."""
    own = set(OmegaConf.load(CONF_DIR / f"{config_name}.yaml")) - {"defaults", "hydra"}
    training = {p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra"} | set(TRAINING_ONLY_ROOTS)
    for arg in argv[1:]:
        root = re.split(r"[.@/=]", arg.lstrip("+~"), maxsplit=1)[0]
        if arg.startswith("-") or root not in training - own:
            continue
        raise UserError(
            f"{arg} is a training setting (train.py); {command.split()[-1]} reads the model from its "
            f"checkpoint: pass ckpt=PATH ({command} --help lists its settings)"
        )


def command_line(argv: list[str], command: str, config_name: str, *free_text: str) -> None:
    """What an entry point does with its command line before Hydra reads it: a training setting
    given to a command that samples from a checkpoint is one line (``refuse_training_overrides``),
    and the ``free_text`` keys are taken as typed (``literal_prompt_overrides``)."""
    if config_name != "config":
        with exit_on_user_error():
            refuse_training_overrides(argv, command, config_name)
    literal_prompt_overrides(argv, *free_text)


# Where and how the data is read, not what: free to change when a run is continued
RESUME_FREE_KEYS = ("data.cache_dir", "data.num_workers", "data.pin_memory", "data.on_device")


def check_resume_settings(cfg: DictConfig, run_dir: Path) -> None:
    """``resume=`` continues a run with the settings given again on the command line (its budget may
    grow). Its model and data settings must be the run's own (its ``config.yaml``), or the run would go
    on with another model or other batches; a difference is named with the values to pass, before
    anything is loaded (without it, a run trained with ``data=text`` failed on AG News' download)."""
    saved_file = Path(run_dir) / "config.yaml"
    if not cfg.get("resume") or not saved_file.exists():
        return
    saved = OmegaConf.load(saved_file)
    differing = []
    for group in ("model", "data"):
        for key in sorted(set(saved.get(group) or {}) | set(cfg.get(group) or {})):
            name = f"{group}.{key}"
            if name in RESUME_FREE_KEYS or key == "_target_":
                continue
            there = OmegaConf.select(saved, name)
            try:
                here = OmegaConf.select(cfg, name, throw_on_resolution_failure=True)
            except Exception:  # an interpolation this process cannot resolve: not a setting to compare
                continue
            if here != there:
                differing.append((name, there, here))
    if differing:
        values = " ".join(f"{name}={'null' if there is None else there}" for name, there, _ in differing)
        raise UserError(
            f"resume={cfg.resume} was trained with other settings ("
            + "; ".join(f"{name}: {there} there, {here} here" for name, there, here in differing)
            + f"); continue it with its own: python train.py {values} ... resume={cfg.resume} "
            "(its config.yaml has every setting)"
        )
