"""What a user writes by hand: load the pipeline once, then one PNG per line of a prompts
file, image i seeded SEED + i on a CPU generator (as txt2img does), the model's own
scheduler, fp16 on CUDA and fp32 elsewhere. With a one-line file it is the minimal
diffusers script.

Usage: python diffusers_loop.py MODEL PROMPTS_FILE OUT_DIR [SEED [STEPS]]
"""

import sys
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

model, prompts_file, out_dir = sys.argv[1:4]
seed = int(sys.argv[4]) if len(sys.argv) > 4 else 1
steps = int(sys.argv[5]) if len(sys.argv) > 5 else 30
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = torch.float16 if device == "cuda" else torch.float32
pipe = DiffusionPipeline.from_pretrained(model, torch_dtype=dtype, use_safetensors=True).to(device)
pipe.set_progress_bar_config(disable=True)
for i, prompt in enumerate(Path(prompts_file).read_text().splitlines()):
    generator = torch.Generator("cpu").manual_seed(seed + i)
    call = pipe(prompt, num_inference_steps=steps, guidance_scale=7.5, generator=generator)
    image = call.images[0]
    image.save(Path(out_dir) / f"{i:05d}.png")
