"""The tiny demo's decoders: random diffusers pipelines in the real folder layouts, around the demo's text encoders.

A real run points ``decoders.{image,audio,video}.folder`` at Stable Diffusion 1.5, AudioLDM and Zeroscope. The
demo cannot download them, so it writes tiny random ``StableDiffusionPipeline`` / ``AudioLDMPipeline`` /
``TextToVideoSDPipeline`` folders with diffusers' own classes (``save_pretrained``), each holding the *same* text
encoder folder that filled the demo's T_e stores, so T_e at generation time is exactly what training aligned to.
The pictures, sounds and clips they produce are noise-like; what the demo shows is the whole path from a prompt
to files, not image quality. Weights are perturbed so zero-initialised output layers do not make every output
the same. Everything is built once under ``<output_dir>/demo_assets`` and reused.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import ml_collections

TINY_VAE = dict(
    block_out_channels=(8, 16),
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    norm_num_groups=4,
    latent_channels=4,
    layers_per_block=1,
    sample_size=16,
)
TINY_UNET = dict(
    block_out_channels=(32, 64),
    layers_per_block=1,
    norm_num_groups=8,
    attention_head_dim=8,
    sample_size=16,
)
TINY_VOCODER = dict(
    model_in_dim=8,
    upsample_initial_channel=16,
    upsample_rates=[4, 4],
    upsample_kernel_sizes=[8, 8],
    resblock_kernel_sizes=[3, 5],
    resblock_dilation_sizes=[[1, 3], [1, 2]],
    sampling_rate=16000,
)


def _perturbed(model, seed: int, scale: float = 0.05):
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model.eval()


def _scheduler(name: str, beta_start: float, beta_end: float, **extra):
    import diffusers

    return getattr(diffusers, name)(
        beta_start=beta_start, beta_end=beta_end, beta_schedule="scaled_linear", set_alpha_to_one=False,
        steps_offset=1, **extra,
    )  # fmt: skip


def _text_parts(text_folder: str, kind: str) -> dict:
    import transformers

    if kind == "clip":
        model, tokenizer = transformers.CLIPTextModel, transformers.CLIPTokenizer
    else:
        model, tokenizer = transformers.ClapTextModelWithProjection, transformers.RobertaTokenizer
    return {
        "text_encoder": model.from_pretrained(os.path.join(text_folder, "text_encoder")),
        "tokenizer": tokenizer.from_pretrained(os.path.join(text_folder, "tokenizer")),
    }


def _done(root: str) -> bool:
    return os.path.exists(os.path.join(root, "model_index.json"))


def audioldm_unet(width: int, sample_size: int = 16):
    """AudioLDM's UNet layout at toy width: the CLAP vector (``width``) is a concatenated class embedding."""
    import diffusers

    return diffusers.UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=(32, 64),
        attention_head_dim=(2, 4),
        norm_num_groups=8,
        class_embed_type="simple_projection",
        projection_class_embeddings_input_dim=width,
        class_embeddings_concat=True,
    )


def _cross_attention_decoder(root: str, text_folder: str, width: int, seed: int, video: bool) -> str:
    """SD1.5 layout (PNDM, as SD1.5 ships) or, with ``video``, Zeroscope's (UNet3D, DDIM); S is ``width`` wide."""
    import diffusers
    import torch

    if _done(root):
        return root
    dims = "3D" if video else "2D"
    torch.manual_seed(seed)
    unet_cls = diffusers.UNet3DConditionModel if video else diffusers.UNet2DConditionModel
    unet = unet_cls(
        **TINY_UNET,
        down_block_types=(f"CrossAttnDownBlock{dims}", f"DownBlock{dims}"),
        up_block_types=(f"UpBlock{dims}", f"CrossAttnUpBlock{dims}"),
        cross_attention_dim=width,
    )
    parts = dict(
        vae=_perturbed(diffusers.AutoencoderKL(**TINY_VAE), seed + 1),
        unet=_perturbed(unet, seed + 2),
        **_text_parts(text_folder, "clip"),
    )
    if video:
        pipe = diffusers.TextToVideoSDPipeline(
            scheduler=_scheduler("DDIMScheduler", 0.00085, 0.012, clip_sample=False), **parts
        )
    else:
        pipe = diffusers.StableDiffusionPipeline(
            scheduler=_scheduler("PNDMScheduler", 0.00085, 0.012, skip_prk_steps=True),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False, **parts,
        )  # fmt: skip
    pipe.save_pretrained(root)
    return root


def make_image_decoder(root: str, text_folder: str, width: int, seed: int = 11) -> str:
    """A tiny Stable-Diffusion-1.5-layout folder whose UNet reads ``width``-wide S."""
    return _cross_attention_decoder(root, text_folder, width, seed, video=False)


def make_video_decoder(root: str, text_folder: str, width: int, seed: int = 13) -> str:
    """A tiny Zeroscope-layout folder (``TextToVideoSDPipeline``, UNet3D, DDIM)."""
    return _cross_attention_decoder(root, text_folder, width, seed, video=True)


def make_audio_decoder(root: str, text_folder: str, width: int, seed: int = 17) -> str:
    """A tiny AudioLDM-layout folder: the CLAP embedding (``width``) enters the UNet as a class embedding."""
    import diffusers
    import torch
    import transformers

    if _done(root):
        return root
    torch.manual_seed(seed)
    unet = audioldm_unet(width)
    vocoder = transformers.SpeechT5HifiGan(transformers.SpeechT5HifiGanConfig(**TINY_VOCODER))
    vae = diffusers.AutoencoderKL(**{**TINY_VAE, "in_channels": 1, "out_channels": 1, "scaling_factor": 0.9227914})
    diffusers.AudioLDMPipeline(
        vae=_perturbed(vae, seed + 1),
        unet=_perturbed(unet, seed + 2),
        scheduler=_scheduler("DDIMScheduler", 0.0015, 0.0195, clip_sample=False),
        vocoder=_perturbed(vocoder, seed + 3, scale=0.2),
        **_text_parts(text_folder, "clap"),
    ).save_pretrained(root)
    return root


BUILDERS = {"IMAGE": make_image_decoder, "VIDEO": make_video_decoder, "AUDIO": make_audio_decoder}


def build_demo_decoders(cfg: ml_collections.ConfigDict) -> dict[str, str]:
    """Builds (once) a decoder folder per controller output around the demo text encoder of that modality;
    returns ``{modality: folder}``. The text encoder folders come from ``demo_assets.build_demo_stores``."""
    root = os.path.join(cfg.output_dir, "demo_assets")
    outputs: Mapping[str, ml_collections.ConfigDict] = cfg.controller.outputs
    folders = {}
    for modality, spec in outputs.items():
        text_folder = os.path.join(root, f"text_encoder_{modality.lower()}")
        if not os.path.exists(os.path.join(text_folder, "text_encoder", "config.json")):
            raise FileNotFoundError(
                f"demo text encoder {text_folder} is missing: it is written by the demo's training run "
                f"(train.py --config ...) under the same output_dir ({cfg.output_dir})"
            )
        folder = os.path.join(root, f"decoder_{modality.lower()}")
        folders[modality] = BUILDERS[modality](folder, text_folder, spec.width)
    return folders


def resolve(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of ``cfg`` whose empty decoder / grounding folders point at the demo's tiny random ones (built once)
    when ``cfg.demo_decoders`` is set; ``cfg`` unchanged otherwise."""
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    if not cfg.get("demo_decoders"):
        return cfg
    for modality, folder in build_demo_decoders(cfg).items():
        if not cfg.decoders[modality.lower()].folder:
            cfg.decoders[modality.lower()].folder = folder
    if not cfg.grounding.dino or not cfg.grounding.sam:
        from spider_jax.grounding import tiny

        dino, sam = tiny.make_tiny_grounding_folders(os.path.join(cfg.output_dir, "demo_assets", "grounding"))
        cfg.grounding.dino, cfg.grounding.sam = cfg.grounding.dino or dino, cfg.grounding.sam or sam
    return cfg
