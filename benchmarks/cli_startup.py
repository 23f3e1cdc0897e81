"""The start-up of the `tfvae` command: `--help`, an argument error, a mistyped run and `tfvae sample RUN -n 1`,
each in fresh processes. Part of `throughput.py` ("cli_startup"); it imports no TensorFlow itself."""

import os
import statistics
import subprocess
import sys
import tempfile
import time

_HERE = os.path.dirname(os.path.abspath(__file__))

CLI_TARGET_SECONDS = 1.0  # `tfvae --help` and an argument error, wall time


def _tfvae(*args):
    """`python -m tfvae ARGS` with this checkout's tfvae, and TF_CPP_MIN_LOG_LEVEL as a user has it: unset."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(_HERE), env.get("PYTHONPATH")]))
    return [sys.executable, "-m", "tfvae", *args], env


def _time_command(args, status, cwd):
    """Wall seconds of one process running `tfvae ARGS` and its lines on stdout and stderr; checks its exit status."""
    argv, env = _tfvae(*args)
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    if done.returncode != status:
        raise RuntimeError(f"{' '.join(args)} exited {done.returncode}, not {status}: {done.stderr[-2000:]}")
    return seconds, len(done.stdout.splitlines()), len(done.stderr.splitlines())


def benchmark_cli_startup(runs, log):
    """Median wall time of `tfvae --help`, an argument error, a mistyped run directory and `tfvae sample RUN -n 1`,
    `runs` processes each.

    The run to sample from is trained first (digits, one epoch), untimed. The commands take turns, so
    a noisy neighbour slows all of them alike. The output lines of each command's last process are
    counted too: a quiet `sample` prints one line and nothing on stderr.
    """
    commands = {
        "help": (["--help"], 0),
        "argument_error": (["train", "--epochs", "0"], 2),
        "mistyped_run": (["sample", "RNU", "-n", "1", "-o", "sample.png"], 2),
        "sample": (["sample", "RUN", "-n", "1", "-o", "sample.png", "--seed", "0"], 0),
    }
    with tempfile.TemporaryDirectory(prefix="tfvae-cli-") as tmp:
        _time_command(["train", "--dataset", "digits", "--epochs", "1", "--latent-dim", "2", "--batch-size", "100",
                       "--out", "RUN"], 0, tmp)
        times, lines = {name: [] for name in commands}, {}
        for round_ in range(runs):
            for name, (args, status) in commands.items():
                seconds, stdout_lines, stderr_lines = _time_command(args, status, tmp)
                lines[name] = stdout_lines, stderr_lines
                times[name].append(seconds)
                log(f"cli start-up round {round_ + 1}/{runs} {name}: {seconds:.2f} s")
    result = {
        name: {"command": " ".join(["tfvae", *args]), "seconds_median": statistics.median(times[name]),
               "seconds_min": min(times[name]), "seconds_max": max(times[name]), "runs": times[name],
               "stdout_lines": lines[name][0], "stderr_lines": lines[name][1]}
        for name, (args, _) in commands.items()
    }
    return {"how": "python -m tfvae in a fresh process, wall time, TF_CPP_MIN_LOG_LEVEL unset", "commands": result}


def cli_startup_targets(cli_startup):
    """`--help` and argument errors (a bad flag, a mistyped run) within CLI_TARGET_SECONDS: met at or below it."""
    targets = {}
    for name in ("help", "argument_error", "mistyped_run"):
        seconds = cli_startup["commands"][name]["seconds_median"]
        targets[f"cli_{name}_seconds"] = {"target": CLI_TARGET_SECONDS, "measured": seconds,
                                          "met": seconds <= CLI_TARGET_SECONDS}
    return targets
