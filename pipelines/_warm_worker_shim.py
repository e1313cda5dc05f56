"""The command a local multi-processing runner starts for each Beam SDK worker when warm
workers are on (`mmcurate.pipelines.warm_workers`): it asks the warm server to fork the worker
and stands in for it until the worker exits.

Run as `python -S -I <this file> <socket>`: standard library only, so it starts in ~20 ms. It
hands the server its environment (the runner's control and logging addresses, the pipeline
options) and its standard streams, waits for the worker's exit status and exits with it. When
this process ends early (the runner kills it), the server sees the connection close and kills
the worker. When the server cannot be reached, this process becomes the usual cold worker
(`python -m apache_beam.runners.worker.sdk_worker_main`), so a run never depends on it.
"""

import json
import os
import socket
import struct
import sys

WORKER_MAIN = "apache_beam.runners.worker.sdk_worker_main"


def cold(python: str, why: str) -> None:
    sys.stderr.write(f"mmcurate warm worker: {why}; starting a cold worker\n")
    sys.stderr.flush()
    os.execv(python, [python, "-m", WORKER_MAIN])


def main() -> int:
    path, python = sys.argv[1], sys.argv[2]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        body = json.dumps({"env": dict(os.environ), "cwd": os.getcwd()}).encode()
        socket.send_fds(s, [struct.pack("!Q", len(body))], [0, 1, 2])
        s.sendall(body)
    except OSError as e:
        s.close()
        cold(python, f"no warm server at {path} ({e})")
    lines = s.makefile("rb")
    first = lines.readline().decode()  # "forked <pid>" or "cold <why>"
    if not first.startswith("forked "):
        s.close()
        cold(python, first[5:].strip() if first.startswith("cold ") else "the warm server did not answer")
    status = lines.readline().decode().strip()  # the worker's exit status, when it ends
    if not status:
        sys.stderr.write("mmcurate warm worker: the warm server went away before the worker ended\n")
        return 1
    return int(status)


if __name__ == "__main__":
    sys.exit(main())
