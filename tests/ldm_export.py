"""Export a diffusers Stable Diffusion folder as ONE original-layout (LDM) safetensors file.

Single-file checkpoints (CompVis / Stability / A1111 / Civitai "model.safetensors") use the key
names of the original ``ldm`` code base, not diffusers'. The Hub is off-limits in tests, so to
test loading them with ``from_single_file(path, config=<diffusers folder>)`` we make our own from
the tiny models of ``scripts/make_tiny_model.py``. The mapping is the inverse of what the
installed diffusers does on load (``diffusers/loaders/single_file_utils.py``:
``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint``,
``convert_open_clip_checkpoint``), written for any block count so it fits the tiny models.

Layouts written:

* UNet: ``model.diffusion_model.*`` (input_blocks / middle_block / output_blocks, time_embed,
  out, SDXL's label_emb); VAE: ``first_stage_model.*`` (attention q/k/v/proj_out as 1x1 convs).
* OpenAI CLIP text encoder (SD 1.x, SDXL's first): HF names under
  ``cond_stage_model.transformer.`` / ``conditioner.embedders.0.transformer.``.
* OpenCLIP text encoder (SD 2.x, SDXL's second): OpenCLIP names (fused ``attn.in_proj_*``,
  ``text_projection`` as ``x @ P``) under ``cond_stage_model.model.`` /
  ``conditioner.embedders.1.model.``. Only the layers diffusers uses are written: real SD 2.x
  files carry one more (unused) layer and a ``text_projection`` that diffusers ignores on load.
"""

from __future__ import annotations

from pathlib import Path

import torch

UNET_RESNET = {
    "norm1.": "in_layers.0.",
    "conv1.": "in_layers.2.",
    "time_emb_proj.": "emb_layers.1.",
    "norm2.": "out_layers.0.",
    "conv2.": "out_layers.3.",
    "conv_shortcut.": "skip_connection.",
}
UNET_TOP = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",  # SDXL
    "add_embedding.linear_2.": "label_emb.0.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
    "mid_block.attentions.0.": "middle_block.1.",
}
VAE_RESNET = {p: p for p in ("norm1.", "conv1.", "norm2.", "conv2.")} | {
    "conv_shortcut.": "nin_shortcut."
}
VAE_ATTENTION = {
    "group_norm.": "norm.",
    "to_q.": "q.",
    "to_k.": "k.",
    "to_v.": "v.",
    "to_out.0.": "proj_out.",
}
VAE_ENDS = {"conv_in.": "conv_in.", "conv_out.": "conv_out.", "conv_norm_out.": "norm_out."}
ATTENTION_WEIGHTS = tuple(f".mid.attn_1.{p}.weight" for p in ("q", "k", "v", "proj_out"))
OPENCLIP_LAYER = {
    "layer_norm1.": "ln_1.",
    "layer_norm2.": "ln_2.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
    "self_attn.in_proj_": "attn.in_proj_",  # made by _fuse_qkv
    "self_attn.out_proj.": "attn.out_proj.",
}
OPENCLIP_TOP = {
    "text_model.embeddings.token_embedding.": "token_embedding.",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.": "ln_final.",
    "text_projection.weight": "text_projection",  # transposed: OpenCLIP computes x @ P
}


def _nest(hf: str, sd: str, inner: dict[str, str]) -> dict[str, str]:
    return {hf + a: sd + b for a, b in inner.items()}


def _rename(state: dict[str, torch.Tensor], table: dict[str, str], prefix: str) -> dict:
    """Rename every key by its (unique) matching prefix in ``table``; unmapped keys are errors."""
    out = {}
    for key, value in state.items():
        old = next((p for p in table if key.startswith(p)), None)
        if old is None:
            raise KeyError(f"no original-layout name for {key!r}")
        out[prefix + table[old] + key[len(old) :]] = value
    return out


def unet_table(config) -> dict[str, str]:
    """diffusers -> LDM key prefixes of a UNet2DConditionModel (one int ``layers_per_block``)."""
    n = config.layers_per_block
    table = dict(UNET_TOP)
    for j in range(2):
        table |= _nest(f"mid_block.resnets.{j}.", f"middle_block.{2 * j}.", UNET_RESNET)
    for i, up_type in enumerate(config.up_block_types):  # as many as down blocks
        for j in range(n):  # input_blocks.0 is conv_in; each level adds n blocks + downsample
            k = 1 + i * (n + 1) + j
            table |= _nest(f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{k}.0.", UNET_RESNET)
            table[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{k}.1."
        table[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(i + 1) * (n + 1)}.0.op."
        for j in range(n + 1):
            k = i * (n + 1) + j
            table |= _nest(f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{k}.0.", UNET_RESNET)
            table[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{k}.1."
        upsampler = f"output_blocks.{i * (n + 1) + n}.{2 if 'CrossAttn' in up_type else 1}."
        table[f"up_blocks.{i}.upsamplers.0."] = upsampler
    return table


def vae_table(config) -> dict[str, str]:
    """diffusers -> LDM key prefixes of an AutoencoderKL (LDM numbers decoder levels upwards)."""
    n, levels = config.layers_per_block, len(config.block_out_channels)
    table = {"quant_conv.": "quant_conv.", "post_quant_conv.": "post_quant_conv."}
    for part in ("encoder", "decoder"):
        table |= _nest(f"{part}.", f"{part}.", VAE_ENDS)
        table |= _nest(f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.", VAE_ATTENTION)
        for j in range(2):
            table |= _nest(
                f"{part}.mid_block.resnets.{j}.", f"{part}.mid.block_{j + 1}.", VAE_RESNET
            )
    for i in range(levels):
        up = levels - 1 - i
        for j in range(n):
            table |= _nest(
                f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.", VAE_RESNET
            )
        for j in range(n + 1):
            table |= _nest(
                f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{up}.block.{j}.", VAE_RESNET
            )
        table[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
        table[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{up}.upsample."
    return table


def openclip_table(config) -> dict[str, str]:
    """transformers CLIP text model -> OpenCLIP key prefixes."""
    table = dict(OPENCLIP_TOP)
    for i in range(config.num_hidden_layers):
        table |= _nest(
            f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}.", OPENCLIP_LAYER
        )
    return table


def _text_state(model) -> dict[str, torch.Tensor]:
    """A CLIP text model's state dict with HF's ``text_model.`` names (transformers >= 5.6
    flattened ``CLIPTextModel``; ``CLIPTextModelWithProjection`` still nests it)."""
    return {
        k if k.startswith(("text_model.", "text_projection.")) else f"text_model.{k}": v
        for k, v in model.state_dict().items()
    }


def _fuse_qkv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """q_proj/k_proj/v_proj -> one ``in_proj_weight`` / ``in_proj_bias`` (rows q, k, v)."""
    out = {}
    for key, value in state.items():
        if ".self_attn.q_proj." in key:
            parts = [state[key.replace("q_proj", p)] for p in ("q_proj", "k_proj", "v_proj")]
            out[key.replace("q_proj.", "in_proj_")] = torch.cat(parts)
        elif ".self_attn.k_proj." not in key and ".self_attn.v_proj." not in key:
            out[key] = value
    return out


def unet_state(unet) -> dict[str, torch.Tensor]:
    return _rename(unet.state_dict(), unet_table(unet.config), "model.diffusion_model.")


def vae_state(vae) -> dict[str, torch.Tensor]:
    state = _rename(vae.state_dict(), vae_table(vae.config), "first_stage_model.")
    for key, value in state.items():  # Linear [C, C] -> 1x1 conv [C, C, 1, 1]
        if key.endswith(ATTENTION_WEIGHTS):
            state[key] = value[..., None, None]
    return state


def openai_clip_state(model, prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in _text_state(model).items()}


def openclip_state(model, prefix: str) -> dict[str, torch.Tensor]:
    state = _fuse_qkv(_text_state(model))
    if "text_projection.weight" in state:
        state["text_projection.weight"] = state["text_projection.weight"].T
    return _rename(state, openclip_table(model.config), prefix)


def ldm_state_dict(pipe) -> dict[str, torch.Tensor]:
    """The original-layout state dict of a loaded StableDiffusion(XL)Pipeline."""
    state = unet_state(pipe.unet) | vae_state(pipe.vae)
    if getattr(pipe, "text_encoder_2", None) is not None:  # SDXL: CLIP ViT-L + OpenCLIP bigG
        state |= openai_clip_state(pipe.text_encoder, "conditioner.embedders.0.transformer.")
        return state | openclip_state(pipe.text_encoder_2, "conditioner.embedders.1.model.")
    # SD 2.x (OpenCLIP ViT-H) is the family with linear transformer projections; SD 1.x is not.
    if pipe.unet.config.use_linear_projection:
        return state | openclip_state(pipe.text_encoder, "cond_stage_model.model.")
    return state | openai_clip_state(pipe.text_encoder, "cond_stage_model.transformer.")


def export_single_file(model_dir: Path, target: Path, dtype: torch.dtype | None = None) -> Path:
    """Write the diffusers folder ``model_dir`` (SD 1.x / 2.x / XL) as one original-layout
    safetensors file ``target`` (tensors cast to ``dtype`` if given); returns ``target``."""
    from diffusers import DiffusionPipeline
    from safetensors.torch import save_file

    pipe = DiffusionPipeline.from_pretrained(model_dir, local_files_only=True)
    state = {
        k: (v if dtype is None else v.to(dtype)).contiguous()
        for k, v in ldm_state_dict(pipe).items()
    }
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, target, metadata={"format": "pt"})
    return target
