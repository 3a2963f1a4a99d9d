"""run_script forks the entry points from a zygote (tests/zygote.py): what a test sees must be what a fresh
``python script args`` gives."""

import pytest

from conftest import BASE_ENV, ROOT, Zygote, run_script

pytestmark = pytest.mark.slow  # real processes


@pytest.fixture(scope="module")
def zygote():
    zygote = Zygote.get()
    if zygote is None:
        pytest.skip("CHARLM_TEST_FRESH=1: every run is a fresh process")
    return zygote


def test_a_forked_run_gives_what_a_fresh_process_gives(zygote, tiny_run, tmp_path):
    ckpt = tiny_run / "checkpoints" / "best.ckpt"
    commands = [
        (ROOT / "sample.py", f"ckpt={ckpt}", "prompt=the ", "length=40", "seed=3", "temperature=0.8"),
        ("train.py", "model.layers=0"),  # relative to cwd, as a user types it
    ]
    for command in commands:
        forked, expected = run_script(*command), run_script(*command, fresh=True)
        assert (forked.returncode, forked.stdout, forked.stderr) == (
            expected.returncode,
            expected.stdout,
            expected.stderr,
        ), command
    assert forked.returncode == 2 and forked.stderr.startswith("error: ")


def test_the_child_takes_the_runs_working_folder_environment_and_threads(zygote, tmp_path):
    script = tmp_path / "show.py"
    script.write_text(
        "import os, sys, torch\n"
        "print(os.getcwd(), sys.path[0], os.environ['CHARLM_PROBE'], torch.get_num_threads(), sys.argv[1:])\n"
        "raise ValueError('boom')\n"
    )
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(tmp_path)}
    assert zygote.serves({**BASE_ENV, **env})  # as run_script passes it
    assert not zygote.serves({**BASE_ENV, "TORCH_PROBE": "1"})  # a key torch may read on import: a fresh process
    result = zygote.run([str(script), "a b"], tmp_path, {**BASE_ENV, **env, "CHARLM_PROBE": "x"}, timeout=60)
    assert result.stdout == f"{tmp_path} {tmp_path} x 1 ['a b']\n"
    assert result.returncode == 1 and result.stderr.rstrip().endswith("ValueError: boom")
