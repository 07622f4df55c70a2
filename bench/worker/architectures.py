"""Wan 2.1 VACE's three parts as published, and a tiny model of the same layout, built with
random weights from their configurations alone: nothing is downloaded.

The dimensions are those of the diffusers checkpoints ``Wan-AI/Wan2.1-VACE-1.3B-diffusers`` and
``Wan-AI/Wan2.1-VACE-14B-diffusers`` (diffusers' ``scripts/convert_wan_to_diffusers.py``), the
umT5-XXL encoder (``google/umt5-xxl``) they share, and the Wan 2.1 VAE (``AutoencoderKLWan``'s
defaults). A model built from them runs exactly the computation the real one does, so its
timings and memory are the real model's; only what it draws is noise.

The tiny layout (widths of a few dozen) is what the tests' model and the benchmark's CPU smoke
test use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

UMT5_XXL: dict[str, Any] = {
    "vocab_size": 256384,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "layer_norm_epsilon": 1e-6,
    "tie_word_embeddings": False,
}

_WAN_TRANSFORMER: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "vace_in_channels": 96,
}


@dataclass(frozen=True)
class Architecture:
    """One model's parts as constructor arguments, and the clip the benchmark makes with it."""

    name: str
    transformer: dict[str, Any]
    text_encoder: dict[str, Any]
    vae: dict[str, Any] = field(default_factory=dict)
    width: int = 832
    height: int = 480
    frames: int = 81
    #: The text encoder's sequence (the pipeline pads prompts to 512 tokens).
    text_tokens: int = 512


SIZES: dict[str, Architecture] = {
    "1.3b": Architecture(
        name="Wan2.1-VACE-1.3B",
        transformer={
            **_WAN_TRANSFORMER,
            "num_attention_heads": 12,
            "ffn_dim": 8960,
            "num_layers": 30,
            "vace_layers": list(range(0, 30, 2)),
        },
        text_encoder=UMT5_XXL,
    ),
    "14b": Architecture(
        name="Wan2.1-VACE-14B",
        transformer={
            **_WAN_TRANSFORMER,
            "num_attention_heads": 40,
            "ffn_dim": 13824,
            "num_layers": 40,
            "vace_layers": list(range(0, 40, 5)),
        },
        text_encoder=UMT5_XXL,
        width=1280,
        height=720,
    ),
    "tiny": Architecture(
        name="tiny Wan VACE (test layout)",
        transformer={
            "patch_size": (1, 2, 2),
            "num_attention_heads": 2,
            "attention_head_dim": 12,
            "in_channels": 16,
            "out_channels": 16,
            "text_dim": 32,
            "freq_dim": 256,
            "ffn_dim": 32,
            "num_layers": 3,
            "cross_attn_norm": True,
            "qk_norm": "rms_norm_across_heads",
            "vace_layers": [0, 2],
            "vace_in_channels": 96,
        },
        text_encoder={
            "vocab_size": 64,
            "d_model": 32,
            "d_kv": 8,
            "d_ff": 32,
            "num_layers": 2,
            "num_heads": 4,
            "relative_attention_num_buckets": 8,
        },
        vae={
            "base_dim": 3,
            "z_dim": 16,
            "dim_mult": [1, 1, 1, 1],
            "num_res_blocks": 1,
            "temperal_downsample": [False, True, True],
        },
        width=64,
        height=32,
        frames=17,
        text_tokens=16,
    ),
}


def build_parts(architecture: Architecture, device: str, dtype: Any) -> tuple[Any, Any, Any]:
    """The transformer and text encoder in ``dtype`` and the VAE in float32, with random
    weights, allocated and initialised directly on ``device`` (a 14B model never passes through
    CPU memory)."""
    import torch
    from diffusers import AutoencoderKLWan, WanVACETransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    with torch.device(device):
        torch.set_default_dtype(dtype)
        try:
            transformer: Any = WanVACETransformer3DModel(  # type: ignore[no-untyped-call]
                **architecture.transformer
            )
            text_encoder: Any = UMT5EncoderModel(UMT5Config(**architecture.text_encoder))
        finally:
            torch.set_default_dtype(previous)
        vae: Any = AutoencoderKLWan(**architecture.vae)  # type: ignore[no-untyped-call]
    return transformer.eval(), text_encoder.eval(), vae.eval()
