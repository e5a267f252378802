"""ImageBind preprocessing from files in numpy: images, audio (kaldi log-mel fbank clips), video (clips x crops).

Why: the E^X store (``spider_jax.embed_cache``) must feed the Flax ImageBind exactly what the public ImageBind
``imagebind/data.py`` feeds the PyTorch one, but torch{vision,audio}, pytorchvideo and decord are not
dependencies here. Every step below mirrors that file (and the library code it calls); the arithmetic is
re-derived from their sources, not copied. Layouts (all float32, channels-last):

    image  (224, 224, 3)          Resize(224, bicubic) on the short side, CenterCrop 224, /255, CLIP mean/std
    audio  (3, 128, 204)          (clips, mel bins, frames): 16 kHz, 3 clips of 2 s, kaldi fbank, (x + 4.268) / 9.138
    video  (15, 2, 224, 224, 3)   (clip * 3 + crop, frames, H, W, C): 5 clips of 2 s, 2 frames each, short side
                                  to 224 (bilinear), CLIP mean/std, left/centre/right (or top/centre/bottom) crops

``to_model_inputs`` is the single place that turns a batch of these into what ``models.imagebind.embed`` takes
(ImageBind's own channels-first layouts).

Known differences from the PyTorch reference (all far below what changes an embedding):

* images: none. torchvision's ``Resize`` on a PIL image *is* ``PIL.Image.resize(..., BICUBIC)`` (PIL's resampling
  always antialiases when shrinking), with torchvision's output-size and centre-crop rounding reproduced here.
* audio: ``torchaudio.load`` is replaced by ``soundfile`` (same [-1, 1] float scaling of PCM). The resampler is
  torchaudio's ``sinc_interp_hann`` kernel (lowpass_filter_width 6, rolloff 0.99, same output length), built and
  applied in float64 instead of float32 (~1e-7 difference). The fbank is computed in float64 (torch: float32),
  so log-mel values agree to ~1e-5. ImageBind does not mix stereo down: ``kaldi.fbank`` (channel=-1) reads
  channel 0, and so do we. Its in-place ``waveform -= mean`` (which also shifts overlapping clips) is cancelled
  exactly by kaldi's per-frame DC removal, so it has no effect on the features.
* video: PyAV replaces decord. Frame indexing follows decord (count of video packets, ``avg_frame_rate``,
  duration = frames / fps, clip frames ``ceil(fps*start) .. ceil(fps*end)``); YUV->RGB goes through libswscale in
  both, so pixels can differ by a grey level for some colour-space tags. Bilinear resizing is torch's
  ``interpolate(align_corners=False)`` without antialiasing (pytorchvideo's ``ShortSideScale``), in float64.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction

import numpy as np

IMAGE, AUDIO, VIDEO = "image", "audio", "video"
KINDS = (IMAGE, AUDIO, VIDEO)
EXTENSIONS = {
    IMAGE: (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"),
    AUDIO: (".wav", ".flac", ".ogg", ".mp3"),
    VIDEO: (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm"),
}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SIZE = 224
# load_and_transform_audio_data defaults
AUDIO_SAMPLE_RATE = 16000
AUDIO_MEL_BINS = 128
AUDIO_TARGET_LENGTH = 204
AUDIO_CLIP_DURATION = 2
AUDIO_CLIPS = 3
AUDIO_MEAN, AUDIO_STD = -4.268, 9.138
# load_and_transform_video_data defaults (frames per clip = clip_duration: UniformTemporalSubsample(clip_duration))
VIDEO_CLIP_DURATION = 2
VIDEO_CLIPS = 5
VIDEO_FRAMES = 2
VIDEO_CROPS = 3
_RESAMPLE_CHUNK = 8192  # polyphase blocks per matmul
_FLT_EPS = float(np.finfo(np.float32).eps)  # kaldi's log floor (std::numeric_limits<float>::epsilon())


class MediaReadError(ValueError):
    """A media file cannot be read or turned into ImageBind inputs; names the file and why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = os.fspath(path), reason
        super().__init__(f"{self.path}: {reason}")


def kind_of(path: str) -> str | None:
    """``image`` / ``audio`` / ``video`` from the file extension (None when unknown)."""
    ext = os.path.splitext(path)[1].lower()
    return next((kind for kind, exts in EXTENSIONS.items() if ext in exts), None)


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise MediaReadError(path, "file not found")
    if not os.path.isfile(path):
        raise MediaReadError(path, "not a regular file")
    if os.path.getsize(path) == 0:
        raise MediaReadError(path, "file is empty")


def _normalise_rgb(x: np.ndarray) -> np.ndarray:
    """(..., 3) float32 in [0, 1] -> CLIP-normalised, in float32 like torchvision's ``Normalize``."""
    return (x - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)


# ----------------------------------------------------------------------------------------------------- images


def resize_short_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(new_w, new_h) of torchvision ``Resize(size)``: short side -> size, long side ``int(size * long / short)``."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def transform_image(image, size: int = IMAGE_SIZE) -> np.ndarray:
    """A PIL image -> (size, size, 3) float32: ImageBind's Resize(bicubic) + CenterCrop + ToTensor + Normalize."""
    from PIL import Image

    image = image.convert("RGB")
    new_size = resize_short_side_size(*image.size, size)
    if new_size != image.size:
        image = image.resize(new_size, Image.Resampling.BICUBIC)
    w, h = image.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))  # torchvision center_crop rounding
    pixels = np.asarray(image, dtype=np.uint8)[top : top + size, left : left + size]
    return _normalise_rgb(pixels.astype(np.float32) / np.float32(255.0))


def load_image(path: str, size: int = IMAGE_SIZE) -> np.ndarray:
    """Image file -> (size, size, 3) float32 normalised, as ``load_and_transform_vision_data`` for one path."""
    from PIL import Image, UnidentifiedImageError

    _check_file(path)
    try:
        with Image.open(path) as image:
            image.load()
            return transform_image(image, size)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as e:
        raise MediaReadError(path, f"cannot decode image ({type(e).__name__}: {e})") from e


# ------------------------------------------------------------------------------------------------------ audio


def read_audio(path: str) -> tuple[np.ndarray, int]:
    """Audio file -> ((channels, samples) float32 in [-1, 1], sample rate), like ``torchaudio.load``."""
    import soundfile

    _check_file(path)
    try:
        data, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError) as e:
        raise MediaReadError(path, f"cannot decode audio ({type(e).__name__}: {e})") from e
    if data.shape[0] == 0:
        raise MediaReadError(path, "audio has no samples")
    return np.ascontiguousarray(data.T), int(rate)


def _sinc_resample_kernel(orig: int, new: int, lowpass_filter_width: int, rolloff: float) -> tuple[np.ndarray, int]:
    """torchaudio's ``sinc_interp_hann`` polyphase kernel: (new, 2 * width + orig), for gcd-reduced rates."""
    base = min(orig, new) * rolloff  # cutoff below both Nyquists (antialiasing, and no edge ringing upsampling)
    width = math.ceil(lowpass_filter_width * orig / base)
    idx = np.arange(-width, width + orig, dtype=np.float64)[None, :] / orig
    t = (-np.arange(new, dtype=np.float64)[:, None] / new + idx) * base  # output phase j at input offsets
    t = np.clip(t, -lowpass_filter_width, lowpass_filter_width)
    window = np.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t = t * math.pi
    safe = np.where(t == 0, 1.0, t)
    kernel = np.where(t == 0, 1.0, np.sin(safe) / safe) * window * (base / orig)
    return kernel, width


def resample(
    waveform: np.ndarray, orig_freq: int, new_freq: int, lowpass_filter_width: int = 6, rolloff: float = 0.99
) -> np.ndarray:
    """Band-limited resampling along the last axis, as ``torchaudio.functional.resample`` (sinc_interp_hann).

    Output length is ``ceil(n * new / orig)`` like torchaudio; float64 arithmetic, float32 result.
    """
    orig_freq, new_freq = int(orig_freq), int(new_freq)
    if orig_freq <= 0 or new_freq <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_freq} -> {new_freq}")
    waveform = np.asarray(waveform, np.float32)
    if orig_freq == new_freq or waveform.shape[-1] == 0:
        return waveform
    g = math.gcd(orig_freq, new_freq)
    orig, new = orig_freq // g, new_freq // g
    kernel, width = _sinc_resample_kernel(orig, new, lowpass_filter_width, rolloff)
    lead, n = waveform.shape[:-1], waveform.shape[-1]
    x = np.pad(waveform.reshape(-1, n).astype(np.float64), ((0, 0), (width, width + orig)))
    blocks = np.lib.stride_tricks.sliding_window_view(x, kernel.shape[1], axis=-1)[:, ::orig]  # (c, blocks, taps)
    out = np.empty((x.shape[0], blocks.shape[1], new), np.float64)
    for s in range(0, blocks.shape[1], _RESAMPLE_CHUNK):  # bounded temporaries on long files
        out[:, s : s + _RESAMPLE_CHUNK] = blocks[:, s : s + _RESAMPLE_CHUNK] @ kernel.T
    target = math.ceil(new * n / orig)  # block b, phase p -> output sample b * new + p
    return out.reshape(x.shape[0], -1)[:, :target].astype(np.float32).reshape(*lead, -1)


def clip_timepoints(duration: float, clip_duration: float, clips_per_video: int) -> list[tuple[Fraction, Fraction]]:
    """(start, end) seconds of pytorchvideo's ``ConstantClipsPerVideoSampler`` over a whole file.

    Starts are evenly spread over [0, duration - clip_duration] (all 0 for a short file): always
    ``clips_per_video`` clips, in exact ``Fraction`` arithmetic like the sampler.
    """
    clip = Fraction(clip_duration)
    max_start = Fraction(max(duration - clip, 0))
    step = Fraction(max_start, max(clips_per_video - 1, 1))
    points = []
    for i in range(clips_per_video):
        points.append((step * i, step * i + clip))
        if step * (i + 1) > max_start:  # the sampler's "end of video reached" test
            break
    return points


def mel_banks(num_bins: int, padded_window_size: int, sample_freq: float, low_freq: float, high_freq: float):
    """Kaldi triangular mel filters (num_bins, padded_window_size // 2 + 1); the Nyquist column is zero."""
    mel = lambda f: 1127.0 * np.log(1.0 + np.asarray(f, np.float64) / 700.0)  # noqa: E731
    nyquist = 0.5 * sample_freq
    if high_freq <= 0.0:
        high_freq += nyquist
    if not (0.0 <= low_freq < nyquist and 0.0 < high_freq <= nyquist and low_freq < high_freq):
        raise ValueError(f"bad mel range low_freq={low_freq}, high_freq={high_freq} for nyquist {nyquist}")
    lo, hi = mel(low_freq), mel(high_freq)
    delta = (hi - lo) / (num_bins + 1)  # num_bins + 1: the end bins spread half a bin past the range
    b = np.arange(num_bins, dtype=np.float64)[:, None]
    left, center, right = lo + b * delta, lo + (b + 1) * delta, lo + (b + 2) * delta
    fft_mel = mel(sample_freq / padded_window_size * np.arange(padded_window_size // 2))[None, :]
    banks = np.maximum(0.0, np.minimum((fft_mel - left) / (center - left), (right - fft_mel) / (right - center)))
    return np.pad(banks, ((0, 0), (0, 1)))


def kaldi_fbank(
    waveform: np.ndarray,
    sample_frequency: float = 16000.0,
    num_mel_bins: int = 23,
    frame_length: float = 25.0,
    frame_shift: float = 10.0,
    window_type: str = "povey",
    preemphasis_coefficient: float = 0.97,
    remove_dc_offset: bool = True,
    round_to_power_of_two: bool = True,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
) -> np.ndarray:
    """Log mel filterbank (frames, num_mel_bins) of a 1-D waveform, as ``torchaudio.compliance.kaldi.fbank``.

    Covers the options ImageBind uses (dither 0, snip_edges, use_energy off so htk_compat is moot, power
    spectrum, log floored at float eps); the defaults are kaldi's.
    """
    x = np.asarray(waveform, np.float64)
    if x.ndim != 1:
        raise ValueError(f"kaldi_fbank takes a 1-D waveform, got shape {x.shape}")
    shift = int(sample_frequency * frame_shift * 0.001)
    size = int(sample_frequency * frame_length * 0.001)
    if not 2 <= size <= len(x) or shift <= 0:
        raise ValueError(f"waveform of {len(x)} samples vs frame of {size} samples, shift {shift}")
    padded = 2 ** (size - 1).bit_length() if round_to_power_of_two else size  # FFT length
    frames = np.lib.stride_tricks.sliding_window_view(x, size)[::shift]  # snip_edges: 1 + (n - size) // shift
    if remove_dc_offset:
        frames = frames - frames.mean(axis=1, keepdims=True)
    if preemphasis_coefficient != 0.0:
        previous = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)  # x[j-1], x[-1] := x[0]
        frames = frames - preemphasis_coefficient * previous
    n = np.arange(size, dtype=np.float64)
    hann = 0.5 - 0.5 * np.cos(2 * math.pi * n / (size - 1))  # symmetric (periodic=False)
    windows = {
        "hanning": hann,
        "povey": hann**0.85,
        "hamming": 0.54 - 0.46 * np.cos(2 * math.pi * n / (size - 1)),
        "rectangular": np.ones(size),
    }
    if window_type not in windows:
        raise ValueError(f"window_type must be one of {sorted(windows)}, got {window_type!r}")
    power = np.abs(np.fft.rfft(frames * windows[window_type], n=padded, axis=1)) ** 2
    mel = power @ mel_banks(num_mel_bins, padded, sample_frequency, low_freq, high_freq).T
    return np.log(np.maximum(mel, _FLT_EPS))


def waveform_to_melspec(
    waveform: np.ndarray, sample_rate: int, num_mel_bins: int = AUDIO_MEL_BINS, target_length: int = AUDIO_TARGET_LENGTH
) -> np.ndarray:
    """One clip (channels, samples) -> (num_mel_bins, target_length): ImageBind's ``waveform2melspec``.

    Channel 0 only (what ``kaldi.fbank`` reads); frames are zero-padded / cut to ``target_length``.
    """
    x = np.asarray(waveform, np.float64)
    x = x - x.mean()
    fbank = kaldi_fbank(
        x[0] if x.ndim == 2 else x,
        sample_frequency=sample_rate,
        num_mel_bins=num_mel_bins,
        frame_length=25.0,
        frame_shift=10.0,
        window_type="hanning",
    ).T
    out = np.zeros((num_mel_bins, target_length), np.float32)
    keep = min(target_length, fbank.shape[1])
    out[:, :keep] = fbank[:, :keep]
    return out


def audio_clips(
    waveform: np.ndarray,
    sample_rate: int,
    *,
    path: str = "<waveform>",
    target_rate: int = AUDIO_SAMPLE_RATE,
    num_mel_bins: int = AUDIO_MEL_BINS,
    target_length: int = AUDIO_TARGET_LENGTH,
    clip_duration: float = AUDIO_CLIP_DURATION,
    clips_per_video: int = AUDIO_CLIPS,
    mean: float = AUDIO_MEAN,
    std: float = AUDIO_STD,
) -> np.ndarray:
    """(channels, samples) at ``sample_rate`` -> (clips, num_mel_bins, target_length) normalised float32."""
    x = np.asarray(waveform, np.float32)
    x = x[None] if x.ndim == 1 else x
    if x.shape[-1] == 0:
        raise MediaReadError(path, "audio has no samples")
    x = resample(x[:1], sample_rate, target_rate)  # only channel 0 reaches the fbank (see module docstring)
    clips = []
    for start, end in clip_timepoints(x.shape[1] / target_rate, clip_duration, clips_per_video):
        clip = x[:, int(start * target_rate) : int(end * target_rate)]
        if clip.shape[1] < int(target_rate * 0.025):
            raise MediaReadError(path, f"audio too short: {x.shape[1]} samples at {target_rate} Hz < one 25 ms frame")
        clips.append(waveform_to_melspec(clip, target_rate, num_mel_bins, target_length))
    return (np.stack(clips) - np.float32(mean)) / np.float32(std)


def load_audio(path: str, **kwargs) -> np.ndarray:
    """Audio file -> (3, 128, 204) float32, as ``load_and_transform_audio_data`` for one path."""
    waveform, rate = read_audio(path)
    return audio_clips(waveform, rate, path=path, **kwargs)


# ------------------------------------------------------------------------------------------------------ video


def _linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    src = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)  # half-pixel, clamped at 0
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    return i0, np.minimum(i0 + 1, in_size - 1), (src - i0)


def bilinear_resize(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """(..., H, W, C) -> (..., height, width, C): torch ``interpolate(bilinear, align_corners=False)``, no antialias."""
    x = np.asarray(x, np.float64)
    h0, h1, hl = _linear_taps(x.shape[-3], height)
    w0, w1, wl = _linear_taps(x.shape[-2], width)
    x = x[..., h0, :, :] * (1 - hl)[:, None, None] + x[..., h1, :, :] * hl[:, None, None]
    x = x[..., w0, :] * (1 - wl)[:, None] + x[..., w1, :] * wl[:, None]
    return x.astype(np.float32)


def short_side_scale_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(new_h, new_w) of pytorchvideo's ``short_side_scale`` (floor of the scaled long side)."""
    if width < height:
        return int(math.floor(height / width * size)), size
    return size, int(math.floor(width / height * size))


def uniform_crop(frames: np.ndarray, size: int, spatial_idx: int) -> np.ndarray:
    """ImageBind's ``uniform_crop`` on (..., H, W, C): 0/1/2 = left/centre/right, or top/centre/bottom if tall."""
    height, width = frames.shape[-3], frames.shape[-2]
    y, x = math.ceil((height - size) / 2), math.ceil((width - size) / 2)
    if height > width:
        y = {0: 0, 1: y, 2: height - size}[spatial_idx]
    else:
        x = {0: 0, 1: x, 2: width - size}[spatial_idx]
    return frames[..., y : y + size, x : x + size, :]


def temporal_subsample(num_frames: int, num_samples: int) -> np.ndarray:
    """pytorchvideo ``uniform_temporal_subsample`` indices: float32 linspace(0, t - 1) truncated to int."""
    steps = np.linspace(0, num_frames - 1, num_samples, dtype=np.float32)
    return np.clip(steps, 0, num_frames - 1).astype(np.int64)


def video_clip_frames(
    num_frames: int, fps: float, clip_duration: float, clips_per_video: int, frames_per_clip: int
) -> list[np.ndarray]:
    """Per clip, the frame indices ImageBind reads: decord's clip window, then the uniform temporal subsample."""
    duration = float(num_frames) / float(fps)
    out = []
    for start, end in clip_timepoints(duration, clip_duration, clips_per_video):
        first, stop = math.ceil(fps * start), min(math.ceil(fps * end), num_frames)
        if stop <= first:
            raise ValueError(f"clip [{float(start):.3f}, {float(end):.3f}) s holds no frames")
        out.append(first + temporal_subsample(stop - first, frames_per_clip))
    return out


def _video_stream_info(path: str) -> tuple[int, float]:
    import av

    with av.open(path) as container:
        if not container.streams.video:
            raise MediaReadError(path, "no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate:
            raise MediaReadError(path, "video stream has no frame rate")
        num_frames = sum(1 for packet in container.demux(stream) if packet.size > 0)  # decord indexes packets
    return num_frames, float(rate)


def read_video_frames(path: str, indices: set[int]) -> dict[int, np.ndarray]:
    """Decode (H, W, 3) uint8 RGB frames at the given presentation-order indices with PyAV.

    An index past the last decodable frame (a truncated file) gets the last decoded frame.
    """
    import av

    frames, last, wanted_max = {}, None, max(indices)
    with av.open(path) as container:
        for i, frame in enumerate(container.decode(container.streams.video[0])):
            if i in indices:
                frames[i] = frame.to_ndarray(format="rgb24")
            last = frame
            if i >= wanted_max:
                break
        if last is None:
            raise MediaReadError(path, "video has no decodable frames")
        missing = indices - frames.keys()
        if missing:
            tail = last.to_ndarray(format="rgb24")
            frames.update(dict.fromkeys(missing, tail))
    return frames


def load_video(
    path: str,
    *,
    size: int = IMAGE_SIZE,
    clip_duration: float = VIDEO_CLIP_DURATION,
    clips_per_video: int = VIDEO_CLIPS,
    frames_per_clip: int = VIDEO_FRAMES,
    num_crops: int = VIDEO_CROPS,
) -> np.ndarray:
    """Video file -> (clips * num_crops, frames_per_clip, size, size, 3) float32, index ``clip * num_crops + crop``.

    As ``load_and_transform_video_data`` for one path: clips from the constant-clips sampler, frames per clip
    uniformly subsampled, frames/255, ``ShortSideScale(size)``, CLIP normalisation, 3 spatial crops per clip.
    """
    import av

    if num_crops not in (1, 3):
        raise ValueError(f"num_crops must be 1 or 3 (ImageBind's SpatialCrop), got {num_crops}")
    _check_file(path)
    try:
        num_frames, fps = _video_stream_info(path)
        if num_frames == 0:
            raise MediaReadError(path, "video has no frames")
        try:
            clip_indices = video_clip_frames(num_frames, fps, clip_duration, clips_per_video, frames_per_clip)
        except ValueError as e:
            raise MediaReadError(path, str(e)) from e
        raw = read_video_frames(path, {int(i) for idx in clip_indices for i in idx})
    except av.FFmpegError as e:
        raise MediaReadError(path, f"cannot decode video ({type(e).__name__}: {e})") from e
    h, w = next(iter(raw.values())).shape[:2]
    new_h, new_w = short_side_scale_size(h, w, size)
    scaled = {}
    for i, frame in raw.items():  # each distinct frame once, even when clips overlap
        scaled[i] = _normalise_rgb(bilinear_resize(frame.astype(np.float32) / np.float32(255.0), new_h, new_w))
    crops = (0, 1, 2) if num_crops == 3 else (1,)
    out = [uniform_crop(np.stack([scaled[int(i)] for i in idx]), size, c) for idx in clip_indices for c in crops]
    return np.stack(out).astype(np.float32)


# ------------------------------------------------------------------------------------------------ dispatching


def load_media(
    path: str,
    kind: str | None = None,
    *,
    image_size: int = IMAGE_SIZE,
    num_mel_bins: int = AUDIO_MEL_BINS,
    target_length: int = AUDIO_TARGET_LENGTH,
    video_frames: int = VIDEO_FRAMES,
) -> np.ndarray:
    """Any supported file -> its ImageBind input array (layouts in the module docstring); kind from the extension.

    The size arguments follow the model config (ImageBind huge: the defaults).
    """
    kind = kind or kind_of(path)
    if kind == IMAGE:
        return load_image(path, image_size)
    if kind == AUDIO:
        return load_audio(path, num_mel_bins=num_mel_bins, target_length=target_length)
    if kind == VIDEO:
        return load_video(path, size=image_size, frames_per_clip=video_frames)
    known = sorted(e for exts in EXTENSIONS.values() for e in exts)
    raise MediaReadError(path, f"unsupported media type {kind or os.path.splitext(path)[1]!r}; known: {known}")


def to_model_inputs(kind: str, batch):
    """Batch of ``load_media`` arrays -> (modality, inputs) for ``models.imagebind.embed``: the one layout adapter.

    ``embed`` takes ImageBind's channels-first public layouts: image (B, 224, 224, 3) -> (B, 3, 224, 224); video
    (B, 15, 2, 224, 224, 3) -> (B, 15, 3, 2, 224, 224) (the model averages the 15 clip x crop embeddings); audio
    (B, 3, 128, 204) -> (B, 3, 1, 128, 204). Works on numpy arrays and jax arrays/tracers alike.
    """
    if kind == IMAGE:
        return "vision", batch.transpose(0, 3, 1, 2)
    if kind == VIDEO:
        return "vision", batch.transpose(0, 1, 5, 2, 3, 4)
    if kind == AUDIO:
        return "audio", batch[:, :, None]
    raise ValueError(f"unknown media kind {kind!r}; expected one of {KINDS}")
