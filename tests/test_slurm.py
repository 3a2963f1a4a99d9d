"""SLURM without a cluster: the launcher preset's sbatch script, the sbatch recipe, and ranks from SLURM."""

import re
import shlex
import subprocess

import pytest
from hydra.utils import instantiate

from charlm.config import compose_config
from charlm.errors import UserError
from charlm.training import check_multirun_launch_mode

from conftest import ROOT

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the slurm extra: pip install -e '.[slurm]'")

SLURM_TASK = {
    "SLURM_JOB_ID": "77",
    "SLURM_JOB_NAME": "charlm",
    "SLURM_NTASKS": "8",
    "SLURM_NTASKS_PER_NODE": "4",
    "SLURM_PROCID": "5",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1",
    "SLURM_NODELIST": "gpu[01-02]",
}


class Submitted(Exception):
    """Raised instead of calling sbatch."""


def test_launcher_preset_submits_one_array_job_with_a_task_per_device(tmp_path, monkeypatch):
    import submitit.slurm.slurm as slurm

    cfg = compose_config(
        [
            "hydra/launcher=slurm",
            "trainer=ddp",
            "trainer.devices=4",
            "trainer.num_nodes=2",
            "hydra.launcher.partition=gpu",
            f"hydra.sweep.dir={tmp_path}",
        ],
        tmp_path,
    )
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    scripts = []

    def submit(executor, command):
        scripts.append(executor._make_submission_file_text(command, "uid"))
        raise Submitted

    monkeypatch.setattr(slurm.SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # "srun is on the PATH"
    monkeypatch.setattr(slurm.SlurmExecutor, "_submit_command", submit)
    with pytest.raises(Submitted):
        launcher.launch([["model.hidden_size=256"], ["model.hidden_size=512"]], initial_job_idx=0)
    (script,) = scripts
    flags = dict(re.findall(r"#SBATCH --([\w-]+)=(\S+)", script))
    assert flags["nodes"] == "2" and flags["ntasks-per-node"] == "4" and flags["gpus-per-node"] == "4"
    assert flags["partition"] == "gpu" and flags["array"] == "0-1%2" and flags["time"] == "240"
    assert re.search(r"^srun .*submitit\.core\._submit", script, re.M)  # each task runs the job through srun


def test_a_slurm_sweep_of_ddp_jobs_is_not_refused_on_the_submitting_machine(tmp_path, monkeypatch):
    from charlm.training import MultirunLaunchCheck

    for key in SLURM_TASK:
        monkeypatch.delenv(key, raising=False)  # a login node: no SLURM task here
    overrides = ["trainer=ddp", "trainer.devices=4", "trainer.accelerator=cpu"]
    MultirunLaunchCheck().on_multirun_start(compose_config(["hydra/launcher=slurm", *overrides], tmp_path))
    with pytest.raises(SystemExit):  # the same sweep with Hydra's basic launcher runs here: refused
        MultirunLaunchCheck().on_multirun_start(compose_config(overrides, tmp_path))


def test_ranks_started_by_slurm_are_not_refused_under_multirun(monkeypatch):
    cfg = compose_config(
        ["trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2", "trainer.accelerator=cpu"], ROOT / "outputs"
    )
    with pytest.raises(UserError, match="re-run the whole sweep"):  # on one machine, Lightning would relaunch
        check_multirun_launch_mode(cfg.trainer)
    for key, value in SLURM_TASK.items():
        monkeypatch.setenv(key, value)
    check_multirun_launch_mode(cfg.trainer)  # under SLURM every rank is a task of its own: fine
    from lightning.pytorch.utilities import rank_zero_only

    assert rank_zero_only.rank == 0  # looking at the settings did not make this process another rank


def test_sbatch_recipe_is_valid_bash_and_its_overrides_compose(tmp_path):
    script = ROOT / "scripts" / "slurm.sbatch"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    flags = dict(re.findall(r"#SBATCH --([\w-]+)=(\S+)", text))
    command = re.search(r"^srun python train.py (.*?)\"\$where\" \"\$@\"", text, re.M)[1]
    run = re.search(r'^RUN="\$\{RUN:-(.*)\}"', text, re.M)[1].replace("${SLURM_JOB_ID}", "77")
    cfg = compose_config([*shlex.split(command), f"hydra.run.dir={run}"], tmp_path)
    assert cfg.trainer.strategy == "ddp"
    assert cfg.trainer.num_nodes == int(flags["nodes"])
    assert cfg.trainer.devices == int(flags["ntasks-per-node"]) == int(flags["gpus-per-node"])
    assert cfg.hydra.run.dir == "outputs/runs/slurm-77"
    assert flags["signal"] == "TERM@90"  # charlm's graceful stop (SIGTERM), not Lightning's SIGUSR1 re-queue
