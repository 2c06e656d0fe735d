"""Friendly scheduler names, the diffusers classes behind them, and their A1111 names.

Pure data plus one lazy builder, so the CLI can list and validate names without
importing diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SchedulerSpec:
    class_name: str
    a1111_sampler: str
    options: dict[str, Any] = field(default_factory=dict)
    a1111_schedule: str | None = None


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
        a1111_schedule="Karras",
    ),
    "unipc": SchedulerSpec("UniPCMultistepScheduler", "UniPC"),
    "lcm": SchedulerSpec("LCMScheduler", "LCM"),
}

_A1111_BY_CLASS = {spec.class_name: spec.a1111_sampler for spec in SCHEDULERS.values()}


def build_scheduler(name: str, model_scheduler_config: Any) -> Any:
    """Build the named scheduler from the model's own scheduler config.

    Starting from the model's config keeps what the model was trained with (beta
    schedule, prediction type such as v-prediction, timestep offset).
    """
    import diffusers

    spec = SCHEDULERS[name]
    scheduler_class = getattr(diffusers, spec.class_name)
    return scheduler_class.from_config(model_scheduler_config, **spec.options)


def a1111_sampler(name: str | None, class_name: str, config: Any) -> tuple[str, str | None]:
    """Return A1111's (Sampler, Schedule type) for a friendly name or a model's own scheduler."""
    if name is not None:
        spec = SCHEDULERS[name]
        return spec.a1111_sampler, spec.a1111_schedule
    schedule = "Karras" if config.get("use_karras_sigmas") else None
    if class_name == "DPMSolverMultistepScheduler" and "sde" in str(config.get("algorithm_type")):
        return "DPM++ 2M SDE", schedule
    return _A1111_BY_CLASS.get(class_name, class_name.removesuffix("Scheduler")), schedule
