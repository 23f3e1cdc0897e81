"""tfvae.launch: N local workers, each with a TF_CONFIG naming all of them and itself."""

import json
import sys

import pytest

from tfvae import launch


def test_each_worker_gets_the_cluster_and_its_own_index():
    configs = [json.loads(c) for c in launch.local_cluster(3)]
    workers = configs[0]["cluster"]["worker"]
    assert len(workers) == len(set(workers)) == 3 and all(w.startswith("localhost:") for w in workers)
    assert [c["cluster"] for c in configs] == [{"worker": workers}] * 3
    assert [c["task"] for c in configs] == [{"type": "worker", "index": i} for i in range(3)]


@pytest.mark.parametrize("workers", [0, -1, 1.5, True, "2"])
def test_a_bad_worker_count_is_refused(workers):
    with pytest.raises(ValueError, match=f"workers: expected an int >= 1; got {workers!r}"):
        launch.local_cluster(workers)


def test_main_runs_the_command_once_per_worker_and_writes_their_logs(tmp_path):
    show = "import json, os; print(json.loads(os.environ['TF_CONFIG'])['task']['index'])"
    assert launch.main(["--workers", "2", "--logs", str(tmp_path), "--", sys.executable, "-c", show]) == 0
    assert [(tmp_path / f"worker-{i}.log").read_text() for i in range(2)] == ["0\n", "1\n"]


def test_a_failing_worker_stops_the_others_and_gives_its_status(tmp_path):
    # Worker 1 fails at once; worker 0 would wait for it for a minute, as in a collective.
    program = ("import json, os, sys, time; i = json.loads(os.environ['TF_CONFIG'])['task']['index']; "
               "sys.exit(3) if i == 1 else time.sleep(60)")
    assert launch.main(["--workers", "2", "--logs", str(tmp_path), "--", sys.executable, "-c", program]) == 3
