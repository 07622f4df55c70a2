"""A tiny, randomly initialised Wan VACE pipeline, built from small configs and saved to a folder
that the worker then loads with its real loading code. Nothing is downloaded.

Its layout is Wan 2.1 VACE's (a causal 3D VAE compressing 8× in space and 4× in time, a DiT with
VACE blocks, a UMT5 text encoder, a UniPC scheduler predicting flow), at widths of a few dozen:
a clip of 33 frames at 64×32 takes well under a second on a CPU. Its videos are noise; the tests
check what the worker does around the model, not what the model draws.

Also the settings and media the worker tests share: a token, a resolution table of tiny sizes,
small reference images.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image

from bench.worker.architectures import SIZES
from worker.settings import WorkerSettings, load_worker_settings

TOKEN = "worker-token-for-tests-0123456789"
#: The tiny transformer's text width (``bench.worker.architectures``' tiny layout).
TEXT_DIM = SIZES["tiny"].transformer["text_dim"]
#: The bot asks for 720p by default, so the tiny table calls its one size that.
TINY_RESOLUTIONS = {"720p": {"width": 64, "height": 32, "flow_shift": 5.0}}
TINY_SIZE = (64, 32)
WORDS = [
    "a",
    "an",
    "the",
    "and",
    "at",
    "of",
    "on",
    "in",
    "with",
    "waves",
    "dances",
    "walks",
    "runs",
    "camera",
    "rooftop",
    "dusk",
    "person",
]

_built: dict[str, Path] = {}


def build_tiny_model(folder: Path, *, text_encoder_dim: int = TEXT_DIM) -> Path:
    """Save a tiny WanVACEPipeline to ``folder`` and answer it.

    ``text_encoder_dim`` other than the transformer's text width (32) makes a model that loads
    but fails on its first denoising step: a broken model, as a bad checkpoint would be.
    """
    import torch
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanVACEPipeline,
        WanVACETransformer3DModel,
    )
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    tiny = SIZES["tiny"]
    torch.manual_seed(0)
    vae = AutoencoderKLWan(**tiny.vae)  # type: ignore[no-untyped-call]
    transformer = WanVACETransformer3DModel(**tiny.transformer)  # type: ignore[no-untyped-call]
    text_encoder = UMT5EncoderModel(
        UMT5Config(**{**tiny.text_encoder, "d_model": text_encoder_dim})
    )
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(WORDS)}
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=word_level, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    scheduler = UniPCMultistepScheduler(  # type: ignore[no-untyped-call]
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    pipe: Any = WanVACEPipeline(  # type: ignore[no-untyped-call]
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=scheduler,
        transformer=transformer,
    )
    pipe.save_pretrained(folder)
    return folder


def tiny_model(kind: str = "working") -> Path:
    """The tiny model (``"working"`` or ``"broken"``), built once per test process into a
    temporary folder that is removed when the process ends."""
    if kind not in _built:
        root = Path(tempfile.mkdtemp(prefix=f"r2v-tiny-{kind}-"))
        atexit.register(shutil.rmtree, root, True)
        dim = TEXT_DIM if kind == "working" else TEXT_DIM // 2
        _built[kind] = build_tiny_model(root / "model", text_encoder_dim=dim)
    return _built[kind]


def tiny_settings(data_dir: Path, model: Path, **overrides: Any) -> WorkerSettings:
    """Worker settings for the tiny model on the CPU: 2 steps, the tiny size table."""
    values: dict[str, Any] = {
        "token": TOKEN,
        "model": str(model),
        "data_dir": data_dir,
        "devices": "cpu",
        "steps": 2,
        "resolutions": TINY_RESOLUTIONS,
        "_env_file": None,
    }
    values.update(overrides)
    return load_worker_settings(**values)


def make_reference(path: Path, size: tuple[int, int], color: tuple[int, int, int]) -> Path:
    Image.new("RGB", size, color).save(path)
    return path
