"""Train the offline demo model from scratch on procedurally drawn shapes, on a 2-core CPU.

A tiny Stable Diffusion: CLIP tokenizer (word-level BPE) + CLIPTextModel, AutoencoderKL
(32x32 RGB <-> 16x16x4 latents), UNet2DConditionModel and a DPM-Solver++ scheduler, exported as
a diffusers ``StableDiffusionPipeline`` folder in fp16 safetensors.

Steps: (1) draw the training pictures (deterministic, numpy + PIL; the held-out colour-shape
pairs in ``demo_data.HELD_OUT`` are never drawn), (2) train the VAE, (3) encode all pictures to
latents once and set the VAE ``scaling_factor`` to 1/std of the latents, (4) train the text
encoder and the U-Net jointly (v-prediction, 10% empty captions for classifier-free
guidance, EMA of the weights), (5) export.

Usage::

    python scripts/train_demo_model.py --out txt2img/model/demo_model [--seed 0] [--minutes 85]

``--minutes`` caps the wall time of the two training phases (at most a quarter of it for the
VAE): the step counts are fixed, so on a fast enough machine the result only depends on the
seed; on a slower one fewer steps are trained (and it says so). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import copy
import math
import pathlib
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import demo_data as D

TEXT_HIDDEN = 64
# DDPM's linear betas, not SD's scaled-linear ones: at t=999 they leave 0.6% of the signal
# (SD's leave 6.8%). On 16x16 latents a blob's place is still readable through 6.8%, and a
# model trained so learns to put the shape where the starting noise suggests instead of where
# the caption says. Sampling uses "trailing" timesteps, so it starts at t=999 too. The U-Net
# predicts v, not the noise: with this little signal left, a noise prediction says almost
# nothing about the picture (its loss barely depends on the colours and places that the
# noisiest steps decide), while v is nearly the picture itself there.
BETAS = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        # Two levels: one halving, 32x32 pictures to 16x16 latents. With three (8x8 latents)
        # small triangles came back from the VAE as rounded blobs.
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=D.SIZE,
        scaling_factor=1.0,
        force_upcast=True,
    )


def build_text_encoder(vocab_size: int, bos: int, eos: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=4 * TEXT_HIDDEN,
        projection_dim=TEXT_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=D.MODEL_MAX_LENGTH,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    return CLIPTextModel(config)


def build_unet():
    """16x16 latents down to 2x2; attention at 8x8, 4x4 and 2x2, where it is cheap and a
    caption's position words can reach the whole picture."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=D.SIZE // 2,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
        up_block_types=("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",),
        block_out_channels=(32, 64, 96, 96),
        layers_per_block=1,
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def make_dataset(n: int, seed: int) -> tuple[np.ndarray, list[D.Scene]]:
    rng = np.random.default_rng(seed)
    pairs = D.all_pairs(held_out=False)
    scenes = [D.random_scene(rng, pairs, jitter=True) for _ in range(n)]
    images = np.stack([D.render(s) for s in scenes])
    return images, scenes


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def fit_steps(step: int, steps: int, t0: float, deadline: float, what: str) -> int:
    """After some steps, shrink the step count if the rest would not fit before ``deadline``
    (the learning-rate schedule follows the new count)."""
    rate = (step + 1) / (time.time() - t0)
    can = step + 1 + int(max(0.0, deadline - time.time()) * rate)
    if can < steps:
        log(f"{what}: {rate:.2f} it/s is too slow for {steps} steps; training {can} instead")
        return can
    return steps


def edge_loss(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 between the pictures' horizontal and vertical differences: keeps corners sharp
    (without it small triangles come back from the VAE rounded, and read as circles)."""
    dx = F.l1_loss(rec.diff(dim=-1), x.diff(dim=-1))
    dy = F.l1_loss(rec.diff(dim=-2), x.diff(dim=-2))
    return dx + dy


def train_vae(vae, x: torch.Tensor, steps: int, batch: int, deadline: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    vae.train()
    t0 = time.time()
    for step in range(10**9):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, 1e-3, 100)
        idx = torch.randint(0, len(x), (batch,), generator=g)
        xb = x[idx]
        post = vae.encode(xb).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        rec_loss = F.mse_loss(rec, xb) + 0.5 * F.l1_loss(rec, xb) + 0.5 * edge_loss(rec, xb)
        kl = post.kl().mean() / z[0].numel()
        loss = rec_loss + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            rate = (step + 1) / (time.time() - t0)
            mse, kl_value = rec_loss.item(), kl.item()
            log(f"vae step {step}/{steps} mse {mse:.5f} kl {kl_value:.3f} {rate:.2f} it/s")
        if step == 49:
            steps = fit_steps(step, steps, t0, deadline, "vae")
        if step + 1 >= steps:
            break
    vae.eval()


@torch.no_grad()
def encode_all(vae, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([vae.encode(x[i : i + 512]).latent_dist.mean for i in range(0, len(x), 512)])


def make_pipeline(vae, text_encoder, tokenizer, unet):
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=DPMSolverMultistepScheduler(
            **BETAS, prediction_type="v_prediction", timestep_spacing="trailing"
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def export(out: pathlib.Path, vae, text_encoder, tokenizer, unet) -> None:
    pipe = make_pipeline(
        copy.deepcopy(vae), copy.deepcopy(text_encoder), tokenizer, copy.deepcopy(unet)
    )
    pipe.to(torch.float16)
    pipe.save_pretrained(out, safe_serialization=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=pathlib.Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=85.0, help="wall-time cap for training")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--vae-steps", type=int, default=2500)
    parser.add_argument("--unet-steps", type=int, default=16000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--check-every", type=int, default=2000, help="quick held-out check every N U-Net steps"
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.time()
    budget = args.minutes * 60

    log(f"drawing {args.images} training pictures (held out: {D.HELD_OUT})")
    images, scenes = make_dataset(args.images, args.seed)
    x = to_tensor(images)

    tokenizer = D.write_tokenizer(args.out / "tokenizer")
    clean_tokenizer = copy.deepcopy(tokenizer)  # exported: training calls set its padding
    torch.manual_seed(args.seed)
    vae = build_vae()
    log(f"vae: {sum(p.numel() for p in vae.parameters()) / 1e6:.2f}M params")
    train_vae(vae, x, args.vae_steps, 32, start + budget * 0.25, args.seed)
    with torch.no_grad():
        rec = vae.decode(vae.encode(x[:256]).latent_dist.mean).sample
        log(f"vae recon mse on 256 train pictures: {F.mse_loss(rec, x[:256]).item():.5f}")
        ims = ((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        log(f"vae recon read back by the eval measures: {D.score(ims, scenes[:256])}")
    latents = encode_all(vae, x)
    scaling = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling)
    latents = latents * scaling
    log(f"latents {tuple(latents.shape)}, scaling_factor {scaling:.4f}")

    from diffusers import DDPMScheduler

    vocab = tokenizer.get_vocab()
    text_encoder = build_text_encoder(len(vocab), vocab[D.BOS_TOKEN], vocab[D.EOS_TOKEN])
    unet = build_unet()
    log(
        f"text encoder {sum(p.numel() for p in text_encoder.parameters()) / 1e6:.2f}M params, "
        f"unet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M params"
    )
    noise_sched = DDPMScheduler(**BETAS)
    alphas = noise_sched.alphas_cumprod
    params = list(unet.parameters()) + list(text_encoder.parameters())
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    ema_params = list(ema_unet.parameters()) + list(ema_text.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    rng = np.random.default_rng(args.seed + 1)
    g = torch.Generator().manual_seed(args.seed + 1)
    unet.train()
    text_encoder.train()
    t0 = time.time()
    steps, losses = args.unet_steps, []
    check = D.eval_scenes(32, held_out=True, seed=1234)
    for step in range(10**9):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, 1e-3, 200)
        idx = rng.integers(0, len(scenes), size=args.batch)
        captions = [D.random_caption(rng, scenes[i]) for i in idx]
        ids = tokenizer(
            captions, padding="max_length", max_length=D.MODEL_MAX_LENGTH, return_tensors="pt"
        ).input_ids
        z0 = latents[torch.from_numpy(idx)]
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, 1000, (args.batch,), generator=g)
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        cond = text_encoder(ids)[0]
        pred = unet(zt, t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred, noise_sched.get_velocity(z0, noise, t))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - decay)
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            rate = (step + 1) / (time.time() - t0)
            left = (steps - step - 1) / rate / 60
            log(
                f"unet step {step}/{steps} loss {np.mean(losses[-100:]):.4f} "
                f"{rate:.2f} it/s, ~{left:.1f} min left"
            )
        if step == 99:
            steps = fit_steps(step, steps, t0, start + budget - 150, "unet")
        if args.check_every and (step + 1) % args.check_every == 0 and step + 1 < steps:
            tc = time.time()
            pipe = make_pipeline(vae, ema_text, tokenizer, ema_unet)
            images = D.generate(pipe, [s.caption() for s in check], seed=0, batch=32)
            acc = D.score(images, check)
            t0 += time.time() - tc  # keep the it/s figure about training only
            log(f"check at step {step + 1}: held-out accuracy {acc} ({time.time() - tc:.0f}s)")
            unet.train()
            text_encoder.train()
        if step + 1 >= steps:
            break

    export(args.out, vae, ema_text, clean_tokenizer, ema_unet)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    log(f"exported {args.out} ({size / 1e6:.2f} MB) after {(time.time() - start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
