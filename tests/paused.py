"""A real txt2img process that stops at a known point and waits for the test.

The child announces the pause point (see txt2img/pause.py) on stderr and blocks until the
test writes to its pipe or signals it, so what the test does next happens at exactly that
point, however fast or slow the machine is. No sleeping, no racing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

WATCHDOG_SECONDS = 300


def process_env(**extra: str) -> dict[str, str]:
    # One thread each: the test process and the CLI process share the machine's cores.
    env = {**os.environ, "NO_COLOR": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("TXT2IMG_DEBUG", None)
    return {**env, **extra}


class PausedChild:
    def __init__(self, args, point: str, **popen) -> None:
        read_end, self._go = os.pipe()
        env = process_env(TXT2IMG_TEST_PAUSE=point, TXT2IMG_TEST_PAUSE_FD=str(read_end))
        self.point = point
        self.process = subprocess.Popen(
            [sys.executable, "-m", "txt2img", *map(str, args)],
            stdout=popen.pop("stdout", subprocess.PIPE), stderr=subprocess.PIPE, text=True,
            env=env, pass_fds=(read_end,), preexec_fn=_default_sigint, **popen,
        )  # fmt: skip
        os.close(read_end)
        # A child that never reaches its point, or ignores the test, is killed: the test
        # then fails on its exit code instead of waiting forever.
        self._watchdog = threading.Timer(WATCHDOG_SECONDS, self.process.kill)
        self._watchdog.start()

    def wait_for_pause(self) -> None:
        """Return once the child has reached its pause point (and is waiting there)."""
        seen = []
        for line in self.process.stderr:
            if line.strip() == f"txt2img: paused at {self.point}":
                return
            seen.append(line)
        self.process.wait(timeout=60)
        raise AssertionError(f"the child ended before {self.point}: {''.join(seen)}")

    def go_on(self) -> None:
        os.write(self._go, b"x")

    def finish(self, timeout: float = 120) -> tuple[str, str, int]:
        """(stdout, the rest of stderr, exit code) once the child has ended."""
        stdout = self.process.stdout.read() if self.process.stdout else ""
        stderr = self.process.stderr.read()
        os.close(self._go)
        code = self.process.wait(timeout=timeout)
        self._watchdog.cancel()
        return stdout, stderr, code


def _default_sigint() -> None:
    """Ctrl-C as a terminal sends it: a test run started in the background (where the
    shell ignores SIGINT, and children inherit that) must not make the child ignore it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
