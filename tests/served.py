"""A real `txt2img serve` process for the tests: started on a free loopback port, its
stderr read line by line, optionally paused at a drawing step (tests/paused.py), so
that what a test does to a request in flight happens at a known step."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading

from paused import WATCHDOG_SECONDS, _default_sigint, process_env

SERVING = re.compile(r"txt2img serve: serving \S+ on (http://\S+) ")


class ServerProcess:
    def __init__(self, *args, pause: str | None = None, **env: str) -> None:
        read_end, self._go = os.pipe()
        extra = (
            {"TXT2IMG_TEST_PAUSE": pause, "TXT2IMG_TEST_PAUSE_FD": str(read_end)} if pause else {}
        )
        self.pause = pause
        self.process = subprocess.Popen(
            [sys.executable, "-m", "txt2img", "serve", "--port", "0", *map(str, args)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=process_env(**(extra if pause else {}), **env), pass_fds=(read_end,),
            preexec_fn=_default_sigint,
        )  # fmt: skip
        os.close(read_end)
        self._watchdog = threading.Timer(WATCHDOG_SECONDS, self.process.kill)
        self._watchdog.start()
        self.lines: list[str] = []
        self._returned: set[int] = set()  # lines `wait_for` has returned
        self._released = 0  # bytes `go_on` has written: paused steps let go on
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        found = self.wait_for(SERVING.pattern)
        self.url = SERVING.search(found).group(1)
        self.port = int(self.url.rsplit(":", 1)[1])

    def _read(self) -> None:
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.lines.append(None)  # the end
            self._changed.notify_all()

    def wait_for(self, pattern: str) -> str:
        """The first stderr line matching `pattern` that no earlier call returned: lines
        from the drawing thread and the web threads may come in either order."""
        with self._changed:
            while True:
                for number, line in enumerate(self.lines):
                    if line is None:
                        log = "\n".join(self.lines[:-1])
                        raise AssertionError(f"the server ended before {pattern!r}:\n{log}")
                    if number not in self._returned and re.search(pattern, line):
                        self._returned.add(number)
                        return line
                self._changed.wait()

    def wait_for_pause(self) -> None:
        self.wait_for(re.escape(f"txt2img: paused at {self.pause}"))

    def go_on(self) -> None:
        os.write(self._go, b"x")
        self._released += 1

    def release_pauses(self) -> None:
        """Let every step that paused so far go on, its line taken as waited for: after a
        test that failed midway, the next one starts from a server that is not paused."""
        if self.pause is None:
            return
        pattern = re.escape(f"txt2img: paused at {self.pause}")
        with self._changed:
            pauses = [n for n, line in enumerate(self.lines)
                      if line is not None and re.search(pattern, line)]  # fmt: skip
            self._returned.update(pauses)
        for _ in range(len(pauses) - self._released):
            self.go_on()

    def log(self) -> str:
        with self._changed:
            return "\n".join(line for line in self.lines if line is not None)

    def stop(self, timeout: float = 120) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        os.close(self._go)  # a paused server goes on, and sees it is stopping
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        self._watchdog.cancel()
        return code
