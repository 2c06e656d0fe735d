"""--save-steps: the reverse diffusion made visible.

At every N-th scheduler step we keep the model's current estimate of the clean image
(x0), then decode those estimates with the VAE into a strip, from the starting noise to
the final picture. Schedulers that report x0 themselves (DDIM, Euler, Euler a, Heun, LMS,
LCM) are used as they are; for the others (PNDM, DPM++, UniPC) x0 comes from the noisy
latents and the model's prediction through the noise schedule:
epsilon: x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t); v: x0 = sqrt(a_t) x_t - sqrt(1 - a_t) v.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from PIL import Image


class StepRecorder:
    def __init__(self, every: int) -> None:
        self.every = every
        self.calls = 0
        self.frames: list[torch.Tensor] = []  # x0 estimates (batch, C, h, w), noise first

    def record(self, scheduler: Any, output: Any, model_output: Any, timestep: Any, sample: Any):
        if not self.frames:
            # The starting noise, at unit scale (sigma schedulers start it at sigma_max).
            self.frames.append(sample.detach() / float(scheduler.init_noise_sigma))
        self.calls += 1
        if self.calls % self.every == 0 or self.calls == len(scheduler.timesteps):
            self.frames.append(clean_estimate(scheduler, output, model_output, timestep, sample))


def clean_estimate(scheduler: Any, output: Any, model_output: Any, timestep: Any, sample: Any):
    for name in ("pred_original_sample", "denoised"):
        estimate = getattr(output, name, None)
        if estimate is not None:
            return estimate.detach().clone()
    alpha = scheduler.alphas_cumprod.to(sample.device)[int(timestep)].to(sample.dtype)
    prediction = scheduler.config.get("prediction_type", "epsilon")
    if prediction == "v_prediction":
        return alpha.sqrt() * sample - (1 - alpha).sqrt() * model_output
    if prediction == "sample":
        return model_output.detach().clone()
    return (sample - (1 - alpha).sqrt() * model_output) / alpha.sqrt()


@contextmanager
def recording(pipe: Any, every: int | None) -> Iterator[StepRecorder | None]:
    """Watch `pipe.scheduler.step` for one pipeline call (no-op when `every` is None)."""
    if every is None:
        yield None
        return
    recorder, scheduler = StepRecorder(every), pipe.scheduler
    original = scheduler.step

    def step(model_output: Any, timestep: Any, sample: Any, *args: Any, **kwargs: Any) -> Any:
        return_dict = kwargs.pop("return_dict", True)
        output = original(model_output, timestep, sample, *args, return_dict=True, **kwargs)
        recorder.record(scheduler, output, model_output, timestep, sample)
        return output if return_dict else output.to_tuple()

    scheduler.step = step
    try:
        yield recorder
    finally:
        del scheduler.step  # back to the class's method


def strip(pipe: Any, recorder: StepRecorder, k: int) -> Image.Image:
    """Image k's frames side by side, decoded with the pipeline's own VAE."""
    vae = pipe.vae
    frames = []
    with torch.no_grad():
        for latents in recorder.frames:
            scaled = latents[k : k + 1].to(vae.device, vae.dtype) / vae.config.scaling_factor
            decoded = vae.decode(scaled, return_dict=False)[0]
            frames.append(pipe.image_processor.postprocess(decoded.float(), output_type="pil")[0])
    width, height = frames[0].size
    sheet = Image.new("RGB", (width * len(frames), height))
    for index, frame in enumerate(frames):
        sheet.paste(frame, (index * width, 0))
    return sheet
