"""Evaluate the demo model by reading generated pictures back with simple pixel geometry.

For held-out colour-shape pairs (never drawn in training) and for seen pairs, with random
backgrounds, positions and sizes, generate with diffusers' ``StableDiffusionPipeline`` from the
exported folder (fp32 on the CPU, 30 steps, guidance 7.5, image i seeded ``seed + i`` on a CPU
generator) and measure each attribute from the pixels (``demo_data.measure``): background =
median border colour, shape colour = most common named colour of the blob, shape = fill ratio
of the blob's bounding box, position = bounding-box centre, size = bounding-box extent.

The same measures are first run on the training renderer's own pictures of the same scenes,
to show they are right (they should score 100%).

Usage::

    python scripts/eval_demo_model.py --model txt2img/demo_model [--n 200] \
        [--out docs/DEMO_MODEL.md] [--train-log TRAIN_LOG]
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import re
import sys
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import demo_data as D

TRAIN_COMMAND = "python scripts/train_demo_model.py --out txt2img/demo_model --seed 0"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def errors(images: np.ndarray, scenes: list[D.Scene], attrs: tuple[str, ...]) -> str:
    counts: collections.Counter[str] = collections.Counter()
    for img, scene in zip(images, scenes, strict=True):
        m = D.measure(img)
        for a in attrs:
            if m[a] != getattr(scene, a):
                counts[f"{a}: {getattr(scene, a)} → {m[a]}"] += 1
    return ", ".join(f"{k} ({v})" for k, v in counts.most_common(6)) or "none"


def per_pair(images: np.ndarray, scenes: list[D.Scene]) -> list[str]:
    rows = []
    for colour, shape in D.HELD_OUT:
        idx = [i for i, s in enumerate(scenes) if (s.colour, s.shape) == (colour, shape)]
        if not idx:
            continue
        acc = D.score(images[idx], [scenes[i] for i in idx])
        rows.append(
            f"| {colour} {shape} | {len(idx)} | {pct(acc['colour'])} | {pct(acc['background'])} "
            f"| {pct(acc['shape'])} | {pct(acc['position'])} | {pct(acc['size'])} |"
        )
    return rows


def training_info(log_path: pathlib.Path | None) -> str:
    if log_path is None or not log_path.is_file():
        return "not recorded (pass `--train-log` with the training script's stderr)"
    text = log_path.read_text(errors="replace")
    found = re.findall(r"exported .* after ([0-9.]+) min", text)
    steps = re.findall(r"unet step (\d+)/(\d+)", text)
    vae = re.findall(r"vae step (\d+)/(\d+)", text)
    parts = []
    if found:
        parts.append(f"{found[-1]} min wall time on one CPU core (drawing, VAE, U-Net, export)")
    if vae:
        parts.append(f"VAE {vae[-1][1]} steps")
    if steps:
        parts.append(f"text encoder + U-Net {steps[-1][1]} steps")
    return "; ".join(parts) or "not found in the log"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=pathlib.Path)
    parser.add_argument("--n", type=int, default=200, help="samples per split")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="markdown report to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-log", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(
        args.model, use_safetensors=True, torch_dtype=torch.float32
    )
    assert isinstance(pipe, StableDiffusionPipeline), type(pipe)
    pipe.set_progress_bar_config(disable=True)
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    log(
        f"loaded {type(pipe).__name__}, native size {native}px, scheduler "
        f"{type(pipe.scheduler).__name__}"
    )

    held = D.eval_scenes(args.n, held_out=True, seed=1000 + args.seed)
    seen = D.eval_scenes(args.n, held_out=False, seed=2000 + args.seed)
    all_attrs = D.ATTRIBUTES
    short_attrs = ("colour", "background", "shape")
    splits = [
        ("held-out pairs, full caption", held, [s.caption() for s in held], all_attrs),
        (
            "held-out pairs, short caption",
            held,
            [s.caption(with_size=False, with_pos=False) for s in held],
            short_attrs,
        ),
        ("seen pairs, full caption", seen, [s.caption() for s in seen], all_attrs),
    ]

    rows, notes = [], []
    # Ground truth: the training renderer's own pictures of the same scenes.
    for name, scenes in (("held-out pairs", held), ("seen pairs", seen)):
        acc = D.score(np.stack([D.render(s) for s in scenes]), scenes)
        rows.append(
            f"| renderer (ground truth), {name} | {len(scenes)} | "
            + " | ".join(pct(acc[a]) for a in all_attrs)
            + " |"
        )
        log(f"ground truth {name}: {acc}")

    # Upper bound from the autoencoder alone: the renderer's pictures, encoded and decoded.
    for name, scenes in (("held-out pairs", held), ("seen pairs", seen)):
        x = torch.from_numpy(np.stack([D.render(s) for s in scenes])).permute(0, 3, 1, 2)
        with torch.no_grad():
            rec = pipe.vae.decode(pipe.vae.encode(x.float() / 127.5 - 1).latent_dist.mean).sample
        rec = ((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        acc = D.score(rec, scenes)
        rows.append(
            f"| VAE reconstruction of those pictures, {name} | {len(scenes)} | "
            + " | ".join(pct(acc[a]) for a in all_attrs)
            + " |"
        )
        log(f"vae reconstruction {name}: {acc}")

    results = {}
    t0 = time.time()
    for name, scenes, prompts, attrs in splits:
        t = time.time()
        images = D.generate(pipe, prompts, seed=args.seed, steps=30, guidance=7.5)
        results[name] = (images, scenes)
        acc = D.score(images, scenes)
        cells = [pct(acc[a]) if a in attrs else "n/a" for a in all_attrs]
        rows.append(f"| model, {name} | {len(scenes)} | " + " | ".join(cells) + " |")
        notes.append(f"- {name}: {errors(images, scenes, attrs)}")
        log(f"{name}: {acc} ({time.time() - t:.0f}s)")
    gen_time = time.time() - t0

    size = sum(f.stat().st_size for f in args.model.rglob("*") if f.is_file())
    held_images, held_scenes = results["held-out pairs, full caption"]
    header = "| | n | shape colour | background | shape | position | size |"
    table = "\n".join([header, "| --- | --- | --- | --- | --- | --- | --- |", *rows])
    pair_table = "\n".join(
        [
            "| held-out pair | n | shape colour | background | shape | position | size |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            *per_pair(held_images, held_scenes),
        ]
    )
    held_txt = ", ".join(f"{c} {s}" for c, s in D.HELD_OUT)
    eval_cmd = f"python scripts/eval_demo_model.py --model txt2img/demo_model --n {args.n}"
    report = REPORT.format(
        native=native,
        held=held_txt,
        table=table,
        pair_table=pair_table,
        notes="\n".join(notes),
        train_cmd=TRAIN_COMMAND,
        eval_cmd=eval_cmd + " --out docs/DEMO_MODEL.md",
        training=training_info(args.train_log),
        size_mb=f"{size / 1e6:.1f}",
        gen_time=f"{gen_time:.0f}",
        n_images=sum(len(s[1]) for s in splits),
        unet_params=f"{sum(p.numel() for p in pipe.unet.parameters()) / 1e6:.2f}",
        vae_params=f"{sum(p.numel() for p in pipe.vae.parameters()) / 1e6:.2f}",
        text_params=f"{sum(p.numel() for p in pipe.text_encoder.parameters()) / 1e6:.2f}",
        scheduler=type(pipe.scheduler).__name__,
        scaling=f"{pipe.vae.config.scaling_factor:.4f}",
    )
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report, encoding="utf-8")
        log(f"wrote {args.out}")
    return 0


REPORT = """\
# The offline demo model

`txt2img/demo_model/` is a tiny text-to-image latent diffusion model made of the same parts as
Stable Diffusion — a CLIP BPE tokenizer and `CLIPTextModel`, an `AutoencoderKL`, a
`UNet2DConditionModel` and a diffusers scheduler — saved as a diffusers
`StableDiffusionPipeline` folder (fp16 safetensors, {size_mb} MB). It was trained from scratch
on one CPU core on procedurally drawn pictures, so `txt2img` can draw real, prompt-following
pictures with no download:

```sh
txt2img "a red circle on a blue background" --model demo
txt2img "a small yellow triangle in the top right on a black background" --model demo
```

It draws {native}x{native} pictures (its native size) of one shape — circle, square or
triangle — in one of 8 colours (red, green, blue, yellow, cyan, magenta, orange, purple) on a
background of another named colour (the same 8, or white, black, gray), at a position (center,
top left, top right, bottom left, bottom right) and a size (small, large). Prompts follow the
training captions: `a [small|large] COLOUR SHAPE [in the POSITION] [on a COLOUR background]`,
where the bracketed parts are optional (left out, that attribute is drawn at random). Other
words are tokenized (byte-level fallback) but mean nothing to the model.

## Parts

- tokenizer: `CLIPTokenizer`, a byte-level BPE vocabulary plus merges that make each caption
  word one token; `model_max_length` 20.
- text encoder: `CLIPTextModel`, 2 layers, hidden size 64, trained from scratch jointly with
  the U-Net ({text_params}M params).
- VAE: `AutoencoderKL`, 3 levels (16, 32, 64 channels), {native}x{native}x3 pictures to 8x8x4
  latents, `scaling_factor` {scaling} = 1/std of the training latents ({vae_params}M params).
- U-Net: `UNet2DConditionModel`, channels (32, 64, 64), cross-attention dim 64, epsilon
  prediction ({unet_params}M params).
- scheduler: `{scheduler}` (DPM-Solver++ 2M) on SD's scaled-linear betas 0.00085 to 0.012.

Training (`scripts/train_demo_model.py`): 12,000 pictures drawn with numpy/PIL from seed 0
(4x supersampled, small jitter of position and size); the VAE is trained on reconstruction
with a small KL term, all pictures are encoded once, then the text encoder and U-Net are
trained together (AdamW, lr 1e-3 with warm-up and cosine decay, batch 32, 10% empty captions so
classifier-free guidance works, each optional caption phrase dropped now and then, EMA of the
weights exported). Training time: {training}.

## Evaluation

Held out of training: the colour-shape pairs **{held}** — never drawn, in any position, size or
background. The evaluation prompts use these pairs (and, for comparison, seen pairs) with random
backgrounds, positions and sizes; the model draws with diffusers' `StableDiffusionPipeline`
from the exported folder, fp32 on the CPU, 30 steps, guidance 7.5 (txt2img's defaults), image
*i* seeded `seed + i` on a CPU generator. Each picture is read back by simple pixel geometry
(`scripts/demo_data.py`, `measure`): background = median border colour, nearest named colour;
shape colour = most common nearest named colour of the blob (the largest connected region that
differs from the background); shape = fill ratio of the blob in its bounding box (triangle
≈ 0.5, circle ≈ 0.785, square ≈ 1); position = bounding-box centre, nearest named position;
size = bounding-box extent, nearest named size. The first two rows run the same measures on
the training renderer's own pictures of the same scenes, which shows the measures are right;
the next two run them on the VAE's reconstructions of those pictures (encode, decode), an upper
bound for what the diffusion model can reach through this VAE.
"Short caption" prompts leave out the size and position (`a red triangle on a blue
background`), so only colours and shape are scored.

{table}

Held-out pairs one by one (full captions):

{pair_table}

Most common misreadings:

{notes}

Generating the {n_images} pictures took {gen_time} s on one CPU core.

## Limitations

The goal was at least 90% for both colours and at least 80% for shape on held-out captions.
The colours meet it, on the held-out colour-shape pairs too; **shape and position do not**.
The model draws a blob of the right colours and roughly the right size, but where the
starting noise puts it, and with a rounded outline:

- Position is at chance (5 positions: 20%). Fed the same noisy latent, the U-Net's clean-image
  estimate for "... in the top left ..." and for "... in the bottom right ..." is practically the
  same at every timestep: the caption acts on the picture globally (colours) but not spatially.
  The likely cause is that at 8x8 latents, under heavy noise, the cross-attention queries carry
  almost no absolute position (only what zero padding gives), so the attention output is the
  same at every latent pixel; position words would need far more training, or a positional
  signal in the U-Net, to take hold.
- Shape is held back first by the VAE: its reconstructions of the renderer's own pictures only
  read back as the right shape about as often as the model's pictures do (rows above): at
  32x32 through 8x8x4 latents, small triangles come back rounded. A second training run with a
  sharper VAE (stronger L1, more steps, larger shapes; 85% shape on reconstructions) and DDPM's
  linear betas (zero-ish terminal signal) did not do better within the remaining time (U-Net
  4,600 steps; 100 held-out samples: colour 84%, background 92%, shape 43%, position 15%),
  so the first run is the one shipped (the scripts reproduce it).
- Next steps, for a longer budget: 16x16 latents (less compression) or a VAE trained longer;
  many more U-Net steps; a positional signal for the U-Net.

## Reproduce

```sh
{train_cmd} 2> TRAIN_LOG
{eval_cmd} --train-log TRAIN_LOG
```

The training script prints its progress to stderr (redirect it to `TRAIN_LOG` to have the
training time in this report). Its step counts are fixed (VAE 1,000, U-Net 8,000), so the
result depends only on the seed (and the torch build); `--minutes` (default 55) caps the
training wall time, and a machine too slow for that trains fewer steps and says so.
Both scripts call `torch.set_num_threads(1)`.
"""


if __name__ == "__main__":
    raise SystemExit(main())
