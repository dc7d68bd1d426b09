"""Worker processes of one MultiWorkerMirroredStrategy on 127.0.0.1, for tests."""

import json
import os
import socket
import subprocess


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command, count=2, env=None, **popen):
    """Starts `count` processes of `command` (a list, or a function of the
    worker's index giving one), each a worker of one cluster (`TF_CONFIG`);
    their stdout and stderr are piped together unless `popen` says otherwise.
    Returns the `Popen` objects, chief first."""
    workers = [f"127.0.0.1:{free_port()}" for _ in range(count)]
    processes = []
    for index in range(count):
        tf_config = {
            "cluster": {"worker": workers},
            "task": {"type": "worker", "index": index},
        }
        options = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, **popen}
        processes.append(
            subprocess.Popen(
                [
                    str(part)
                    for part in (command(index) if callable(command) else command)
                ],
                env={**(env or os.environ), "TF_CONFIG": json.dumps(tf_config)},
                text=True,
                **options,
            )
        )
    return processes


def finish(processes, timeout=300):
    """Waits for every worker (killing any left) and asserts each succeeded,
    showing the tail of their output otherwise."""
    try:
        outputs = [p.communicate(timeout=timeout) for p in processes]
    finally:
        for p in processes:
            p.kill()
    text = "\n".join(part or "" for output in outputs for part in output)
    assert all(p.returncode == 0 for p in processes), text[-3000:]
