"""The Flax image pipeline vs diffusers' StableDiffusionPipeline on a tiny random SD folder.

The folder is written by diffusers itself (``StableDiffusionPipeline.save_pretrained``: model_index.json, unet/,
vae/, scheduler/, text_encoder/, tokenizer/), read by our converters, and both pipelines are run from the same
conditioning and the same initial noise: 5 steps with classifier-free guidance, latents and decoded images ≤1e-3.
"""

import os

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

from spider_jax.diffusion.pipelines import ImagePipeline, save_png, to_uint8
from tests.diffusion_fixtures import (
    SD_UNET_TINY,
    perturb,
    scaled_linear_scheduler,
    text_components,
    tiny_vae,
    torch_pipeline,
)

TOL = 1e-3
WIDTH = 32  # text encoder width = UNet cross_attention_dim
TOKENS = 16  # tokenizer model_max_length


@pytest.fixture(scope="module")
def sd_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("tiny_sd"))
    text = text_components(root, "clip", WIDTH, TOKENS)
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(**dict(SD_UNET_TINY, cross_attention_dim=WIDTH, sample_size=8))
    vae = tiny_vae()
    pipe = diffusers.StableDiffusionPipeline(
        vae=perturb(vae, 1),
        unet=perturb(unet, 2),
        scheduler=scaled_linear_scheduler("PNDMScheduler", skip_prk_steps=True),  # SD1.5's scheduler_config
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        **text,
    )
    pipe.save_pretrained(root)
    return root


def _torch_pipe(root: str, scheduler: str | None = None) -> diffusers.StableDiffusionPipeline:
    pipe = torch_pipeline(diffusers.StableDiffusionPipeline, root, safety_checker=None, requires_safety_checker=False)
    if scheduler:
        pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    return pipe


def _torch_latents(pipe, cond, noise, steps: int, guidance: float, negative=None) -> torch.Tensor:
    """The torch pipeline's final latents (NHWC) for the embedding ``cond`` from the initial ``noise`` (NHWC)."""
    extra = {} if negative is None else {"negative_prompt_embeds": torch.from_numpy(negative)}
    with torch.no_grad():
        out = pipe(
            prompt_embeds=torch.from_numpy(cond),
            latents=torch.from_numpy(noise).permute(0, 3, 1, 2),
            num_inference_steps=steps,
            guidance_scale=guidance,
            output_type="latent",
            **extra,
        )
    return out.images.permute(0, 2, 3, 1)


def _inputs(batch: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cond = rng.normal(size=(batch, TOKENS, WIDTH)).astype(np.float32)  # a controller's S, not a prompt
    noise = rng.normal(size=(batch, 8, 8, 4)).astype(np.float32)  # NHWC, 16x16 pixels
    return cond, noise


@pytest.mark.parametrize("scheduler", [None, "DDIMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler"])
def test_guided_pipeline_matches_diffusers(sd_root, scheduler):
    cond, noise = _inputs()
    ours = ImagePipeline.from_pretrained(sd_root, scheduler=scheduler)
    latents = ours.sample_latents(cond, latents=noise, num_inference_steps=5, guidance_scale=7.5)
    images = ours.decode(latents)

    pipe = _torch_pipe(sd_root, scheduler)
    want = _torch_latents(pipe, cond, noise, 5, 7.5)  # negative embedding: the pipeline encodes "" itself, as ours does
    with torch.no_grad():
        decoded = pipe.vae.decode(want.permute(0, 3, 1, 2) / pipe.vae.config.scaling_factor).sample
        want_images = pipe.image_processor.postprocess(decoded, output_type="np")  # (B, H, W, 3) in [0, 1]
    got = np.asarray(latents)
    assert got.shape == (2, 8, 8, 4) and np.abs(want.numpy()).max() > 0.1
    np.testing.assert_allclose(got, want.numpy(), atol=TOL, rtol=0)
    assert images.shape == (2, 16, 16, 3) and 0.0 <= images.min() and images.max() <= 1.0
    np.testing.assert_allclose(images, want_images, atol=TOL, rtol=0)


def test_unguided_with_explicit_negative_and_shapes(sd_root):
    cond, noise = _inputs(batch=1, seed=1)
    ours = ImagePipeline.from_pretrained(sd_root, text_encoder=False)
    plain = ours.sample_latents(cond, latents=noise, num_inference_steps=3, guidance_scale=1.0)
    pipe = _torch_pipe(sd_root)
    want = _torch_latents(pipe, cond, noise, 3, 1.0)
    np.testing.assert_allclose(np.asarray(plain), want.numpy(), atol=TOL, rtol=0)

    negative = np.zeros_like(cond)
    guided = ours.sample_latents(cond, negative=negative, latents=noise, num_inference_steps=3, guidance_scale=5.0)
    want = _torch_latents(pipe, cond, noise, 3, 5.0, negative=negative)
    np.testing.assert_allclose(np.asarray(guided), want.numpy(), atol=TOL, rtol=0)

    with pytest.raises(ValueError, match="without a text encoder"):
        ours.sample_latents(cond, num_inference_steps=2, guidance_scale=7.5)
    with pytest.raises(ValueError, match="conditioning width 7 != the UNet's cross_attention_dim 32"):
        ours.sample_latents(np.zeros((1, TOKENS, 7), np.float32), guidance_scale=1.0)
    with pytest.raises(ValueError, match="multiples of 2"):
        ours.sample_latents(cond, guidance_scale=1.0, height=15, width=16)


def test_seeded_png_output_is_deterministic(sd_root, tmp_path):
    ours = ImagePipeline.from_pretrained(sd_root)
    cond, _ = _inputs(batch=2)
    assert ours.default_size() == (16, 16)
    first = ours(cond, num_inference_steps=2, seed=3)
    again = ours(cond, num_inference_steps=2, seed=3)
    other = ours(cond, num_inference_steps=2, seed=4)
    assert first.dtype == np.uint8 and first.shape == (2, 16, 16, 3)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert not np.array_equal(first[0], first[1])  # two conditionings, two images

    paths = save_png(first, tmp_path / "a")
    paths_again = save_png(ours.decode(ours.sample_latents(cond, num_inference_steps=2, seed=3)), tmp_path / "b")
    assert [os.path.basename(p) for p in paths] == ["image_0.png", "image_1.png"]
    for p, q in zip(paths, paths_again, strict=True):
        assert open(p, "rb").read() == open(q, "rb").read()
        np.testing.assert_array_equal(np.asarray(Image.open(p)), first[int(p[-5])])
    with pytest.raises(ValueError, match=r"\(B, H, W, 1\|3\|4\)"):
        save_png(np.zeros((16, 16, 3), np.uint8), tmp_path / "c")
    np.testing.assert_array_equal(to_uint8(np.array([0.0, 0.5, 1.0])), [0, 128, 255])


def test_save_pretrained_round_trip(sd_root, tmp_path):
    ours = ImagePipeline.from_pretrained(sd_root, scheduler="DDIMScheduler")
    ours.save_pretrained(tmp_path / "export")
    back = ImagePipeline.from_pretrained(tmp_path / "export")
    assert type(back.scheduler).__name__ == "DDIMScheduler"
    cond, noise = _inputs(batch=1, seed=2)
    kwargs = dict(latents=noise, num_inference_steps=2, guidance_scale=3.0)
    np.testing.assert_array_equal(np.asarray(ours.sample_latents(cond, **kwargs)), back.sample_latents(cond, **kwargs))
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(tmp_path / "export"))  # diffusers reads it too
    assert isinstance(pipe.scheduler, diffusers.DDIMScheduler)
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        ImagePipeline.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="unknown scheduler 'LMS'"):
        ImagePipeline.from_pretrained(sd_root, scheduler="LMS")
