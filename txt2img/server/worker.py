"""The one thread that draws: tasks in order of arrival, one pipeline call at a time on
the device, with queued A1111 requests of the same settings drawn in the same call.

The web server's threads only queue tasks, cancel them and read the progress; every
model, pipeline and tensor is touched by this thread alone.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..draw import Drawing, Part, Sink, draw_call, pipeline_calls
from ..jobs import ImageJob
from ..outputs.progress import Reporter
from ..settings import DrawOptions
from .catalog import Entry, LoadedModels, Served
from .config import ServeConfig
from .wire import check_pixels


class Stopping(Exception):
    """The server is shutting down and takes no more work."""


class QueueFull(Exception):
    """--queue-size tasks are waiting already."""


@dataclass(eq=False)
class Task:
    """One request's work: images to draw, or (`jobs` None) a model to switch to."""

    label: str  # for the server's log
    entry: Entry | None  # the model; None: the server's current one
    jobs: list[ImageJob] | None
    options: DrawOptions = field(default_factory=DrawOptions)
    sink: Sink | None = None
    reporter: Reporter = field(default_factory=lambda: Reporter(True, 0))
    done: set[int] = field(default_factory=set)  # --resume: indices not to hand over
    lora_hashes: dict[str, str] = field(default_factory=dict)  # --from: see add_addons
    mergeable: bool = False  # may share a pipeline call with other tasks
    keeps_partial: bool = False  # interrupted: its images so far are still handed over
    on_finish: Callable[[Task], None] = lambda task: None
    stop: str | None = None  # "interrupted", "cancelled" or "stopping"
    skip_call: bool = False  # A1111's /skip: the call in flight ends, the task goes on
    error: BaseException | None = None
    failed: int = 0
    number: int = 0
    finished: bool = False


class Progress:
    """What /progress tells: the task being drawn, its images and the current step."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.task: Task | None = None
        self.images = self.images_done = self.call_size = self.step = self.steps = 0
        self.started = 0.0
        self.timestamp = ""

    def begin(self, task: Task, images: int) -> None:
        with self.lock:
            self.task, self.images, self.images_done = task, images, 0
            self.step = self.steps = self.call_size = 0
            self.started = time.monotonic()
            self.timestamp = time.strftime("%Y%m%d%H%M%S")

    def call(self, size: int) -> None:
        with self.lock:
            self.call_size, self.step = size, 0

    def stepped(self, step: int, steps: int) -> None:
        with self.lock:
            self.step, self.steps = step, steps

    def called(self) -> None:
        with self.lock:
            self.images_done += self.call_size

    def end(self) -> None:
        with self.lock:
            self.task = None

    def fraction(self) -> tuple[float, float, dict[str, Any]]:
        """(progress 0..1, seconds left, A1111's state fields) of the task being drawn."""
        with self.lock:
            if self.task is None or not self.images:
                return 0.0, 0.0, {"job_timestamp": self.timestamp or "0",
                                  "sampling_step": 0, "sampling_steps": 0}  # fmt: skip
            in_call = self.call_size * self.step / self.steps if self.steps else 0.0
            done = min(1.0, (self.images_done + in_call) / self.images)
            elapsed = time.monotonic() - self.started
            left = elapsed / done - elapsed if done > 0 else 0.0
            state = {"job_timestamp": self.timestamp, "sampling_step": self.step,
                     "sampling_steps": self.steps}  # fmt: skip
            return done, left, state


class Worker:
    def __init__(self, models: LoadedModels, config: ServeConfig, log: Callable[[str], None]):
        self.models, self.config, self.log = models, config, log
        self.lock = threading.Condition()
        self.queue: deque[Task] = deque()
        self.running: list[Task] = []  # the task being served and its call's partners
        self.progress = Progress()
        self.stopping = False
        self._numbers = itertools.count(0)  # 0: the default model's load at start
        self.thread = threading.Thread(target=self._loop, name="txt2img-draw", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def load_default(self) -> None:
        """Load the default model in the drawing thread and wait for it. All torch work
        stays in that one thread: measured on 2 CPU cores, a model loaded in another
        thread drew the demo model 3x slower there (two OpenMP thread pools)."""
        loaded = threading.Event()
        task = Task("load the default model", None, None, on_finish=lambda _: loaded.set())
        self.submit(task)
        loaded.wait()
        if task.error is not None:
            raise task.error

    def submit(self, task: Task) -> None:
        with self.lock:
            if self.stopping:
                raise Stopping
            if len(self.queue) >= self.config.queue_size:
                raise QueueFull
            task.number = next(self._numbers)
            self.queue.append(task)
            self.lock.notify()

    def cancel(self, task: Task, reason: str) -> None:
        """Drop a waiting task, or stop a running one at its next step."""
        with self.lock:
            waiting = task in self.queue
            if waiting:
                self.queue.remove(task)
            task.stop = task.stop or reason
        if waiting:
            self._finish(task)

    def interrupt(self) -> None:
        """A1111's /interrupt: the pipeline call in flight stops at its next step."""
        with self.lock:
            for task in self.running:
                task.stop = task.stop or "interrupted"

    def skip(self) -> None:
        """A1111's /skip: the pipeline call in flight stops at its next step and its
        images are handed over as they are; the rest of the request is drawn."""
        with self.lock:
            for task in self.running:
                task.skip_call = True

    def stop(self) -> None:
        """Take no more work; drop the waiting tasks, stop the running ones."""
        with self.lock:
            self.stopping = True
            waiting = list(self.queue)
            self.queue.clear()
            for task in [*waiting, *self.running]:
                task.stop = task.stop or "stopping"
            self.lock.notify_all()
        for task in waiting:
            self._finish(task)

    @property
    def job_count(self) -> int:
        """Tasks waiting or being drawn (A1111's state.job_count: 0 when idle)."""
        with self.lock:
            return len(self.queue) + len(self.running)

    @property
    def skipped(self) -> bool:
        with self.lock:
            return any(task.skip_call for task in self.running)

    @property
    def interrupted(self) -> bool:
        with self.lock:
            return any(task.stop == "interrupted" for task in self.running)

    def _loop(self) -> None:
        while True:
            with self.lock:
                while not self.queue and not self.stopping:
                    self.lock.wait()
                if self.stopping:
                    return
                task = self.queue.popleft()
                self.running = [task]
            try:
                self._serve(task)
            except Exception as exc:
                task.error = exc
            finally:
                self.progress.end()
                with self.lock:
                    self.running = []
                self._finish(task)

    def _finish(self, task: Task) -> None:
        if not task.finished:
            task.finished = True
            task.on_finish(task)

    def _serve(self, task: Task) -> None:
        if task.stop:
            return
        served = self.models.get(task.entry)
        if task.jobs is None:  # POST /options with sd_model_checkpoint
            self.models.current = served.entry
            return
        self.models.add_addons(served, task.jobs, task.lora_hashes)
        drawing = Drawing(task.options, served.model, task.reporter, task.sink, served.prompts)
        calls = pipeline_calls(drawing, task.jobs)
        for call in calls:
            check_pixels(call, self.config.max_pixels)
        self.progress.begin(task, sum(job.index not in task.done for c in calls for job in c))
        task.reporter.start()
        try:
            for call in calls:
                if task.stop or task.error:
                    break
                part = task_part(task, drawing, call)
                if part.wanted():
                    partners = self._partners(served, call) if task.mergeable else []
                    self._call([(task, part), *partners])
        finally:
            task.reporter.stop()

    def _partners(self, served: Served, call: list[ImageJob]) -> list[tuple[Task, Part]]:
        """Waiting tasks that can be drawn in `call`: mergeable, with the same model and
        settings, needing no add-on not loaded yet, and all their images fit."""
        key = served.prompts.batch_key(call[0])
        room = max(self.config.max_batch, len(call)) - len(call)
        side = call[0]["width"] * call[0]["height"]
        room = min(room, self.config.max_pixels // side - len(call))
        partners = []
        with self.lock:
            for other in list(self.queue):
                if room <= 0:
                    break
                if not other.mergeable or other.stop or not other.jobs:
                    continue
                if (other.entry or self.models.current) != served.entry:
                    continue
                if len(other.jobs) > room or self.models.needs_addons(served, other.jobs):
                    continue
                jobs = [job.with_defaults(served.model.defaults.values()) for job in other.jobs]
                if any(served.prompts.batch_key(job) != key for job in jobs):
                    continue
                self.queue.remove(other)
                self.running.append(other)
                drawing = Drawing(
                    other.options, served.model, other.reporter, other.sink, served.prompts
                )
                partners.append((other, task_part(other, drawing, jobs)))
                room -= len(jobs)
        return partners

    def _call(self, members: list[tuple[Task, Part]]) -> None:
        """One pipeline call for the members' parts (`draw.draw_call`); a /progress,
        /interrupt and /skip that reach into it; merged tasks finished after it."""
        tasks = [task for task, _ in members]
        self.progress.call(sum(len(part.jobs) for _, part in members))

        def on_step(step: int, steps: int) -> bool:
            self.progress.stepped(step, steps)
            for task in tasks:
                task.reporter.step_done(step, steps)
            return all(task.stop or task.skip_call for task in tasks)

        if len(tasks) > 1:
            numbers = ", ".join(str(task.number) for task in tasks)
            count = sum(len(part.jobs) for _, part in members)
            self.log(f"requests {numbers}: {count} images drawn in one pipeline call")
        try:
            draw_call([part for _, part in members], on_step)
        except Exception as exc:  # a failure outside any part: every member gets it
            for _, part in members:
                part.error = part.error or exc
        finally:
            self.progress.called()
            for task, part in members:
                task.skip_call = False
                task.failed += part.failed
                task.error = task.error or part.error
            for task in tasks[1:]:  # the first is finished by the loop that serves it
                with self.lock:
                    self.running.remove(task)
                self._finish(task)


def task_part(task: Task, drawing: Drawing, jobs: list[ImageJob]) -> Part:
    """A task's share of a call. A stopped task's images are not handed over, except
    an interrupted A1111 request's (A1111 returns what it had drawn)."""

    def keep() -> bool:
        return not task.stop or (task.stop == "interrupted" and task.keeps_partial)

    return Part(drawing, jobs, task.done, keep)
