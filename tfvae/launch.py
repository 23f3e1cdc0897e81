"""Starts N workers of a MultiWorkerMirroredStrategy cluster on this machine, each with its TF_CONFIG.

    python -m tfvae.launch --workers 2 -- tfvae train --dataset digits --out runs/digits --epochs 20

runs the command once per worker, worker i with TF_CONFIG naming all N workers on free localhost
ports and itself as task i (worker 0 is the chief, which alone writes files), and exits with the
first non-zero exit status, or 0. Across machines, start the command on each machine by hand with a
TF_CONFIG naming every machine's host:port (see docs/distributed.md).
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time


def free_ports(n):
    """n ports of localhost that were free a moment ago (the sockets are held until all are chosen)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("localhost", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def local_cluster(workers):
    """The TF_CONFIG (a JSON string) of each of `workers` workers on localhost, worker 0 the chief."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers: expected an int >= 1; got {workers!r}.")
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(workers)]}
    return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}) for i in range(workers)]


def start(command, workers, logs=None, env=None):
    """Starts `command` (a list of arguments) once per worker of a local cluster: the Popen objects.

    Args:
        logs: None (the workers print here), or a directory for each worker's output, worker-I.log.
        env: the workers' environment without TF_CONFIG; None for this process's.
    """
    env = dict(os.environ if env is None else env)
    processes = []
    for index, config in enumerate(local_cluster(workers)):
        output = None if logs is None else open(os.path.join(logs, f"worker-{index}.log"), "w", encoding="utf-8")
        try:
            processes.append(subprocess.Popen(command, env={**env, "TF_CONFIG": config}, stdout=output,
                                              stderr=None if output is None else subprocess.STDOUT))
        finally:
            if output is not None:
                output.close()  # the worker holds its own copy
    return processes


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tfvae.launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, required=True, help="workers to start, >= 1")
    parser.add_argument("--logs", help="a directory for each worker's output (worker-I.log); default: here")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command each worker runs, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("name the command to run after --, e.g. -- tfvae train --dataset digits")
    if args.workers < 1:
        parser.error(f"--workers: expected an int >= 1; got {args.workers}")
    if args.logs is not None:
        os.makedirs(args.logs, exist_ok=True)
    processes = start(command, args.workers, logs=args.logs)
    try:
        while None in [process.poll() for process in processes]:  # every one polled, none skipped
            failed = [process.returncode for process in processes if process.returncode]
            if failed:
                # A worker that failed leaves the others waiting in collectives: stop them too.
                _interrupt(processes)
                return failed[0]
            time.sleep(0.2)
    except KeyboardInterrupt:
        _interrupt(processes)
        return 130
    return next((process.returncode for process in processes if process.returncode), 0)


def _interrupt(processes):
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # blocked in a collective op that waits for the stopped worker
            process.kill()
            process.wait()

if __name__ == "__main__":
    sys.exit(main())
