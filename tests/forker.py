"""Runs of the real command line, each a process of its own, without paying the imports
each time: a server process imports the command line once, then forks a child per run
(a real process: its own pid, exit code, signals, environment, folder and output).

The server is single-threaded when it forks (checked: the command line's imports start
no thread), so a child is as clean as a fresh interpreter that imported the same modules.
Each test worker has its own server, started on first use, ended when the worker ends.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import anyio

SERVER = r'''
import json, os, selectors, signal, sys
import backfill.cli, backfill.cli.shared, backfill.library, backfill.cli.fetch
import backfill.cli.inspect, backfill.cli.demo, backfill.cli.report
import aiohttp, obstore, anyio
assert len(os.listdir("/proc/self/task")) == 1, "a thread before fork"
children = {}
selector = selectors.DefaultSelector()
selector.register(sys.stdin, selectors.EVENT_READ)


def answer(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def child(request):
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(fd, 0)
    out = os.open(request["stdout"], os.O_WRONLY)
    err = os.open(request["stderr"], os.O_WRONLY)
    os.dup2(out, 1)
    os.dup2(err, 2)
    sys.argv = ["backfill", *request["args"]]
    code = 1
    try:
        backfill.cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        # What the user would see (typer's hook prints it), before _exit would drop it:
        # a test that says "no traceback" must be able to see one.
        sys.excepthook(*sys.exc_info())
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


pending = b""
while True:
    for _ in selector.select(timeout=0.02):
        # Read what is there, unbuffered: two requests sent at once arrive in one read,
        # and a buffered readline would leave the second unseen by the selector.
        chunk = os.read(0, 1 << 16)
        if not chunk:
            sys.exit(0)
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            request = json.loads(line)
            pid = os.fork()
            if pid == 0:
                child(request)
            children[pid] = request["id"]
            answer({"id": request["id"], "pid": pid})
    while children:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            break
        answer({"id": children.pop(pid), "code": os.waitstatus_to_exitcode(status)})
'''


class Forker:
    """The server of one test worker (see the module); usable from any event loop (each
    test has its own): the server's answers are read by a thread of this process."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._ids = itertools.count()
        self._answers: dict[int, dict[str, Any]] = {}
        self._changed = threading.Condition()
        self._start = threading.Lock()

    async def run(self, args: list[str], env: dict[str, str], cwd: Any,
                  timeout: float) -> tuple[int | None, str, str]:  # noqa: ASYNC109
        """Run ``backfill args`` in a forked child: (exit code, or None past ``timeout``
        (it was killed), stdout, stderr)."""
        process = self._server()
        request_id = next(self._ids)
        with tempfile.TemporaryDirectory() as folder:
            out, err = Path(folder, "out"), Path(folder, "err")
            out.touch()
            err.touch()
            assert process.stdin is not None
            with self._changed:
                process.stdin.write((json.dumps({
                    "id": request_id, "args": args, "env": env, "cwd": str(cwd),
                    "stdout": str(out), "stderr": str(err)}) + "\n").encode())
                process.stdin.flush()
            answer = await anyio.to_thread.run_sync(self._wait, request_id, timeout,
                                                    abandon_on_cancel=True)
            code = answer.get("code")
            if code is None and "pid" in answer:  # past the timeout: the child is killed
                with contextlib.suppress(ProcessLookupError):
                    os.kill(answer["pid"], 9)
            return code, out.read_text(errors="replace"), err.read_text(errors="replace")

    def _wait(self, request_id: int, timeout: float) -> dict[str, Any]:
        with self._changed:
            self._changed.wait_for(lambda: "code" in self._answers.get(request_id, {}),
                                   timeout)
            return self._answers.pop(request_id, {})

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            message = json.loads(line)
            with self._changed:
                self._answers.setdefault(message["id"], {}).update(message)
                self._changed.notify_all()

    def _server(self) -> subprocess.Popen[bytes]:
        with self._start:
            if self._process is None:
                self._process = subprocess.Popen(
                    [sys.executable, "-c", SERVER], stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, cwd=tempfile.gettempdir())
                threading.Thread(target=self._read, args=(self._process,),
                                 daemon=True).start()
            return self._process


FORKER = Forker()
