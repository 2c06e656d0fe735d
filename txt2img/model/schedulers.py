"""The one sampler table: txt2img's scheduler names, the diffusers classes behind them,
and AUTOMATIC1111's names for them (Sampler and Schedule type), read and written here
for the PNG writer, `--from`/`info` and the A1111 API alike.

Pure data plus one lazy builder, so the CLI can list and validate names without
importing diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError


@dataclass(frozen=True)
class SchedulerSpec:
    class_name: str
    sampler: str  # A1111's Sampler
    options: dict[str, Any] = field(default_factory=dict)
    schedule: str = "Uniform"  # A1111's Schedule type


_DPM_2M = {"algorithm_type": "dpmsolver++", "solver_order": 2}

SCHEDULERS: dict[str, SchedulerSpec] = {
    "ddim": SchedulerSpec("DDIMScheduler", "DDIM"),
    # PRK warm-up steps break at low step counts; SD models ship PNDM with them skipped.
    "pndm": SchedulerSpec("PNDMScheduler", "PLMS", {"skip_prk_steps": True}),
    "euler": SchedulerSpec("EulerDiscreteScheduler", "Euler"),
    "euler-a": SchedulerSpec("EulerAncestralDiscreteScheduler", "Euler a"),
    "heun": SchedulerSpec("HeunDiscreteScheduler", "Heun"),
    "lms": SchedulerSpec("LMSDiscreteScheduler", "LMS"),
    "dpm++2m": SchedulerSpec(
        "DPMSolverMultistepScheduler", "DPM++ 2M", {**_DPM_2M, "use_karras_sigmas": False}
    ),
    "dpm++2m-karras": SchedulerSpec(
        "DPMSolverMultistepScheduler",
        "DPM++ 2M",
        {**_DPM_2M, "use_karras_sigmas": True},
        schedule="Karras",
    ),
    "unipc": SchedulerSpec("UniPCMultistepScheduler", "UniPC"),
    "lcm": SchedulerSpec("LCMScheduler", "LCM"),
}
# The samplers that add fresh noise at every step (drawn from the image's CPU generator).
STEP_NOISE = frozenset({"euler-a", "lcm"})


@dataclass(frozen=True)
class Sampler:
    """One of A1111's samplers, with the schedule its "Automatic" means (A1111 1.9+)."""

    name: str
    aliases: tuple[str, ...]  # A1111's API aliases and stable-diffusion.cpp's names
    automatic: str = "Uniform"


SAMPLERS = (
    Sampler("DPM++ 2M", ("k_dpmpp_2m", "dpmpp_2m", "dpm++2m"), automatic="Karras"),
    Sampler("Euler a", ("k_euler_a", "k_euler_ancestral", "euler_a", "euler_ancestral")),
    Sampler("Euler", ("k_euler", "euler")),
    Sampler("LMS", ("k_lms", "lms")),
    Sampler("Heun", ("k_heun", "heun")),
    Sampler("DDIM", ("ddim",)),
    Sampler("PLMS", ("plms",)),
    Sampler("UniPC", ("unipc",)),
    Sampler("LCM", ("k_lcm", "lcm")),
)
# A1111's schedule types that txt2img draws: (API name, label, other spellings).
SCHEDULE_TYPES = (
    ("automatic", "Automatic", ("",)),
    ("uniform", "Uniform", ("discrete", "default")),  # stable-diffusion.cpp's names
    ("karras", "Karras", ()),
)


def build_scheduler(name: str, model_scheduler_config: Any) -> Any:
    """Build the named scheduler from the model's own scheduler config.

    Starting from the model's config keeps what the model was trained with (beta
    schedule, prediction type such as v-prediction, timestep offset).
    """
    import diffusers

    spec = SCHEDULERS[name]
    scheduler_class = getattr(diffusers, spec.class_name)
    return scheduler_class.from_config(model_scheduler_config, **spec.options)


def schedule_of(config: Any) -> str:
    """A1111's Schedule type for the sigmas a scheduler's config draws with."""
    sigmas = [k for k in ("karras", "exponential", "beta") if config.get(f"use_{k}_sigmas")]
    return sigmas[0].capitalize() if sigmas else "Uniform"


def a1111_sampler(name: str | None, class_name: str, config: Any) -> tuple[str, str]:
    """A1111's (Sampler, Schedule type) for the scheduler a job drew with: `name` (None:
    the model's own) built as `class_name` with `config`. The Schedule type is what the
    config draws with, and always given: a reader that finds none takes A1111's
    "Automatic", which is Karras for DPM++ 2M."""
    if name is None:  # the model's own: the table's sampler it is, whatever its sigmas
        same = (
            n for n, spec in SCHEDULERS.items()
            if spec.class_name == class_name
            and all(config.get(key) == value for key, value in spec.options.items())
        )  # fmt: skip
        name = next(same, None)
    if name is not None:  # (Euler with Karras sigmas is A1111's Euler, Karras too)
        return SCHEDULERS[name].sampler, schedule_of(config)
    # A scheduler outside the table: its class, which `scheduler_for` refuses by name.
    sampler = class_name.removesuffix("Scheduler")
    if class_name == "DPMSolverMultistepScheduler" and "sde" in str(config.get("algorithm_type")):
        sampler = "DPM++ 2M SDE"
    return sampler, schedule_of(config)


def find_sampler(name: str) -> Sampler | None:
    wanted = name.strip().lower()
    for sampler in SAMPLERS:
        if wanted == sampler.name.lower() or wanted in sampler.aliases:
            return sampler
    return None


def schedule_label(schedule: str | None) -> str | None:
    """A1111's label for a Schedule type as given (name, label or other spelling);
    None if txt2img has no such schedule."""
    wanted = (schedule or "").strip().lower()
    for name, label, others in SCHEDULE_TYPES:
        if wanted in (name, *others):
            return label
    return None


def split_sampler(sampler: str, schedule: str | None) -> tuple[str, str | None]:
    """(Sampler, Schedule type), with a schedule named at the end of the sampler taken
    from it: it wins over the Schedule type, as in A1111's reader."""
    name = sampler.strip()
    head, _, tail = name.rpartition(" ")
    if head and tail and schedule_label(tail) is not None:
        return head, tail
    return name, schedule


def scheduler_for(sampler: str, schedule: str | None, where: str = "the image") -> str:
    """txt2img's scheduler for A1111's Sampler and Schedule type, read as A1111 reads
    them: a schedule named at the end of the sampler ("DPM++ 2M Karras", A1111 before
    1.9; "euler_a karras", stable-diffusion.cpp) wins, and "Automatic" (or none) is the
    sampler's own default. `where` names what asked, for the message."""
    name, named_schedule = split_sampler(sampler, schedule)
    found, label = find_sampler(name), schedule_label(named_schedule)
    if found is not None and label == "Automatic":
        label = found.automatic
    specs = [n for n, s in SCHEDULERS.items() if found and s.sampler == found.name]
    chosen = [n for n in specs if SCHEDULERS[n].schedule == label]
    if not chosen:
        what = repr(sampler) + (f" with schedule {schedule!r}" if schedule else "")
        raise UsageError(
            f"{where} asks for the sampler {what}, which txt2img does not have",
            f"choose one with --scheduler ({', '.join(SCHEDULERS)})",
        )
    return chosen[0]
