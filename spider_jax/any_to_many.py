"""Any-to-many generation: prompt (+ input media) -> answer text -> modality groups -> decoders -> a response.

One :class:`SpiderGenerator` holds the trained Spider variables and, loaded on first use, the decoders named in
``cfg.decoders`` (Stable Diffusion / AudioLDM / Zeroscope folders) and the grounding heads (``cfg.grounding``).
For each request it

1. builds the question exactly as training did (``template.format_question``; ``<X-Token>`` slots hold the
   projected ImageBind embeddings of the input media: from the media store when it has the file, else computed
   with ImageBind from ``cfg.imagebind``),
2. decodes with the KV cache (``generate.decode``), keeping the hidden state of each M-Prompt token,
3. parses the answer (``template.parse_answer``, never raises) and pairs each group with its first M-Prompt
   token's state (M_e, plus that token's input embedding as in training),
4. runs the Decoders-Controller with the decoder's own T_e of the group's T-Prompt -> S, and the decoder; box and
   mask groups go to GroundingDINO / SAM with the T-Prompt as the query on the first input image.

Every group succeeds or fails on its own: a missing decoder folder, an unsupported shape or a decoder error is
recorded on that group (``GroupOutput.error``) and the others are still produced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from spider_jax import imagebind_data as ibd
from spider_jax import input_pipeline as ip
from spider_jax import sharding
from spider_jax import template as tpl
from spider_jax.generate import SamplingConfig, decode, left_pad, variable_shardings
from spider_jax.models.controller import DecodersController
from spider_jax.models.spider import input_embeddings, llm_variables

GENERATED = ("IMAGE", "AUDIO", "VIDEO")
GROUNDED = ("BOX", "MASK")
DECODER_HINTS = {
    "IMAGE": "a Stable Diffusion 1.5 diffusers folder (e.g. runwayml/stable-diffusion-v1-5)",
    "AUDIO": "an AudioLDM diffusers folder (e.g. cvssp/audioldm-l-full)",
    "VIDEO": "a Zeroscope diffusers folder (e.g. cerspense/zeroscope_v2_576w)",
}


class GenerationInputError(ValueError):
    """A request cannot be run (empty or over-long prompt, unreadable media, unknown modality); says which."""


@dataclasses.dataclass(frozen=True)
class Request:
    prompt: str
    inputs: tuple[tuple[str, str], ...] = ()  # (modality, path) in slot order
    task: str = tpl.SMART  # the TaskPrompt; SMARTMULTIMODAL lets the model pick the output modalities
    answer_prefix: str = ""  # forced first answer tokens (e.g. "[OUT]")
    request_id: str = ""


@dataclasses.dataclass
class GroupOutput:
    """One modality group of an answer and what its decoder produced (arrays on the host)."""

    index: int
    modality: str
    t_prompt: str
    text_before: str
    error: str = ""
    image: np.ndarray | None = None  # (H, W, 3) uint8
    audio: np.ndarray | None = None  # (samples,) float32
    sample_rate: int = 0
    video: np.ndarray | None = None  # (F, H, W, 3) uint8
    detections: Any = None  # grounding.Detections
    masks: Any = None  # grounding.Masks
    router_weights: list[float] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.error


@dataclasses.dataclass
class Decoded:
    """One decoded answer: ``states`` are ``[(M-Prompt token, M_e (D,)), ...]`` in answer order."""

    question: str
    text: str  # decoded answer, template tokens included
    token_ids: list[int]
    states: list[tuple[str, np.ndarray]]
    stopped: bool  # ended with [END] (False: cut at max_new_tokens)


@dataclasses.dataclass
class Response:
    request: Request
    question: str
    answer: str  # decoded text, template tokens included, up to and including [END]
    parsed: tpl.ParsedAnswer
    groups: list[GroupOutput]
    tokens: int
    stopped: bool  # False when max_new_tokens cut the answer before [END]
    input_image: np.ndarray | None = None  # the image the grounding heads read (for overlays)


# --------------------------------------------------------------------------------------------- inputs


class InputEmbedder:
    """E^X of input media: the media store's entry when it has the file, else Flax ImageBind (``cfg.imagebind``).

    Every file is opened with ImageBind's preprocessing first, so an unreadable file fails here with its name,
    whichever source then gives the embedding.
    """

    def __init__(self, job, cfg: ml_collections.ConfigDict):
        self.job, self.cfg = job, cfg
        self._encoder = None

    def _imagebind(self):
        if self._encoder is None:
            from spider_jax import embed_cache

            ib = self.cfg.get("imagebind", ml_collections.ConfigDict({"checkpoint": "", "config": "imagebind_huge"}))
            if not ib.checkpoint:
                return None
            self._encoder = embed_cache.imagebind_encoder(ib.checkpoint, ib.config)
        return self._encoder

    def __call__(self, inputs: Sequence[tuple[str, str]]) -> np.ndarray:
        width = self.job.spider.encoder_width
        out = np.zeros((len(inputs), width), np.float32)
        for k, (modality, path) in enumerate(inputs):
            kind = modality.lower()
            try:
                array = ibd.load_media(path, kind)
            except ibd.MediaReadError as e:
                raise GenerationInputError(f"input {modality.lower()} {path!r} cannot be read: {e}") from e
            store = self.job.media_store
            if store is not None:
                found, hit = store.lookup(
                    np.asarray([ip.media_key(path, self.job.pipeline.media_root)]), allow_missing=True
                )
                if bool(np.asarray(hit)[0]):
                    out[k] = np.asarray(found[0], np.float32)
                    continue
            encoder = self._imagebind()
            if encoder is None:
                raise GenerationInputError(
                    f"no ImageBind embedding for {path}: it is not in the media store and no ImageBind checkpoint "
                    "is configured; set --config.imagebind.checkpoint=/path/to/imagebind_huge.pth or add the file "
                    "to the store with `python -m spider_jax.embed_cache`"
                )
            embedding = np.asarray(encoder.apply(encoder.params, kind, array[None]), np.float32)[0]
            if embedding.shape != (width,):
                raise GenerationInputError(f"ImageBind gives {embedding.shape} for {path}; Spider expects ({width},)")
            out[k] = embedding
        return out


def check_request(request: Request) -> Request:
    if not isinstance(request.prompt, str) or not request.prompt.strip():
        raise GenerationInputError("the prompt is empty")
    for modality, path in request.inputs:
        if modality not in tpl.INPUT_MODALITIES:
            raise GenerationInputError(f"unknown input modality {modality!r}; inputs can be {tpl.INPUT_MODALITIES}")
        if not os.path.isfile(path):
            raise GenerationInputError(f"input {modality.lower()} file {path!r} does not exist")
    if request.task not in tpl.TASK_PROMPTS:
        raise GenerationInputError(f"unknown task {request.task!r}; choose from {tpl.TASK_PROMPTS}")
    return request


# --------------------------------------------------------------------------------------------- generator


@dataclasses.dataclass(frozen=True)
class GenerationOptions:
    max_new_tokens: int = 512
    sampling: SamplingConfig = SamplingConfig()
    seed: int = 0

    @classmethod
    def from_config(cls, g: Mapping[str, Any]) -> GenerationOptions:
        sampling = SamplingConfig(float(g.get("temperature", 0.0)), int(g.get("top_k", 0)), float(g.get("top_p", 1.0)))
        return cls(int(g.get("max_new_tokens", 512)), sampling, int(g.get("seed", 0)))


class SpiderGenerator:
    def __init__(self, job, variables: Mapping[str, Any], cfg: ml_collections.ConfigDict):
        self.job, self.cfg, self.variables = job, cfg, variables
        self.template = job.pipeline.template
        self.llm_vars = llm_variables(job.spider, variables)
        self.mesh = None
        if cfg.get("generate") and cfg.generate.get("mesh_decode") and jax.device_count() > 1:
            # The LLM split over cfg.mesh like training (a 7B base on chips that cannot hold it alone).
            self.mesh = sharding.create_mesh(dict(cfg.mesh))
            shardings = variable_shardings(job.spider.llm, self.mesh)
            self.llm_vars = sharding.place(self.llm_vars, {k: shardings[k] for k in self.llm_vars})
        self.embedder = InputEmbedder(job, cfg)
        self._embed = jax.jit(lambda v, b: input_embeddings(job.spider, v, b))
        self._decoders: dict[str, Any] = {}
        self._grounding = None
        self._resolved = not cfg.get("demo_decoders")
        ids = job.template_ids.mprompt_to_modality
        self.mprompt_ids = np.asarray(sorted(ids), np.int32)
        self.id_to_token = {i: self.job.tokenizer.decode([i]).strip() for i in ids}
        rows = np.asarray(self.llm_vars["params"]["model"]["embed_tokens"][jnp.asarray(self.mprompt_ids)], np.float32)
        self.mprompt_rows = dict(zip(self.mprompt_ids.tolist(), rows, strict=True))  # M_e adds the token's embedding
        self.end_id = job.tokenizer.single_token_id(self.template.end_token)

    # ---- step 1-3: text
    def _prompt_batch(self, requests: Sequence[Request]) -> tuple[dict[str, np.ndarray], list[str]]:
        tok, job = self.job.tokenizer, self.job
        questions, token_lists = [], []
        for r in requests:
            question = tpl.format_question(r.prompt, r.task, [m for m, _ in r.inputs], self.template)
            questions.append(question)
            token_lists.append(tok.encode(question, add_bos=True))
        ids, mask = left_pad(token_lists, tok.pad_id)
        max_inputs = max([len(r.inputs) for r in requests] + [1])
        positions = np.full((len(requests), max_inputs), -1, np.int32)
        codes = np.zeros((len(requests), max_inputs), np.int32)
        embeddings = np.zeros((len(requests), max_inputs, job.spider.encoder_width), np.float32)
        for row, (r, tokens) in enumerate(zip(requests, token_lists, strict=True)):
            offset = ids.shape[1] - len(tokens)
            slots = [i for i, t in enumerate(tokens) if t in job.template_ids.slot_to_modality]
            if len(slots) != len(r.inputs):
                raise GenerationInputError(
                    f"the prompt of request {r.request_id or row} holds input-slot tokens itself "
                    f"({len(slots)} slots for {len(r.inputs)} inputs); remove them from the text"
                )
            embeddings[row, : len(r.inputs)] = self.embedder(r.inputs)
            for k, (pos, (modality, _)) in enumerate(zip(slots, r.inputs, strict=True)):
                positions[row, k] = offset + pos
                codes[row, k] = ip.modality_code(modality)
        batch = dict(
            input_ids=ids, attention_mask=mask, input_positions=positions, input_modality=codes,
            input_embeddings=embeddings,
        )  # fmt: skip
        return batch, questions

    def _forced(self, requests: Sequence[Request], max_new_tokens: int) -> np.ndarray | None:
        encode = self.job.tokenizer.encode
        prefixes = [encode(r.answer_prefix, add_bos=False) if r.answer_prefix else [] for r in requests]
        longest = max(len(p) for p in prefixes)
        if longest == 0:
            return None
        if longest > max_new_tokens:
            raise GenerationInputError(f"answer_prefix is {longest} tokens, more than max_new_tokens {max_new_tokens}")
        forced = np.full((len(requests), longest), -1, np.int32)
        for row, p in enumerate(prefixes):
            forced[row, : len(p)] = p
        return forced

    def _decode(self, batch: Mapping[str, np.ndarray], prompt_embeds: Any, requests, options: GenerationOptions):
        arrays = dict(
            ids=batch["input_ids"], mask=batch["attention_mask"], embeds=prompt_embeds,
            rng=jax.random.PRNGKey(options.seed), stop=np.asarray([self.end_id], np.int32),
            forced=self._forced(requests, options.max_new_tokens), capture=self.mprompt_ids,
        )  # fmt: skip
        if self.mesh is not None:  # every input next to the split variables (replicated: prompts are small)
            everywhere = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
            arrays = {k: v if v is None else jax.device_put(v, everywhere) for k, v in arrays.items()}
        return decode(
            self.job.spider.llm, self.llm_vars, arrays["ids"], arrays["mask"], options.max_new_tokens,
            sampling=options.sampling, rng=arrays["rng"], stop_ids=arrays["stop"], pad_id=self.job.tokenizer.pad_id,
            prompt_embeds=arrays["embeds"], forced_ids=arrays["forced"], capture_ids=arrays["capture"],
            capture_layer=self.job.spider.mprompt_layer, max_captures=int(self.cfg.data.max_groups),
        )  # fmt: skip

    def answer(self, requests: Sequence[Request], options: GenerationOptions) -> list[Decoded]:
        """Decodes a batch of requests (validated first); one :class:`Decoded` per request."""
        requests = [check_request(r) for r in requests]
        batch, questions = self._prompt_batch(requests)
        limit = self.job.spider.llm.max_position_embeddings
        if batch["input_ids"].shape[1] + options.max_new_tokens > limit:
            longest = int(batch["attention_mask"].sum(1).max())
            raise GenerationInputError(
                f"prompt of {longest} tokens + max_new_tokens {options.max_new_tokens} exceeds the model's "
                f"{limit} positions; shorten the prompt or lower max_new_tokens"
            )
        prompt_embeds = self._embed(self.variables, batch)
        on_mesh = sharding.activation_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()
        with on_mesh:
            out = self._decode(batch, prompt_embeds, requests, options)
        tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
        captured, count = np.asarray(out.captured), np.asarray(out.captured_count)
        at = np.asarray(out.captured_at)
        results = []
        for row in range(len(requests)):
            answer_ids = tokens[row, : lengths[row]].tolist()
            states = []
            for k in range(min(int(count[row]), captured.shape[1])):
                token_id = answer_ids[at[row, k]]
                state = captured[row, k]
                if self.job.spider.add_input_embedding:
                    state = state + self.mprompt_rows[token_id]
                states.append((self.id_to_token[token_id], state))
            stopped = bool(answer_ids) and answer_ids[-1] == self.end_id
            text = self.job.tokenizer.decode(answer_ids)
            results.append(Decoded(questions[row], text, answer_ids, states, stopped))
        return results

    # ---- step 4: decoders
    def _group_states(self, parsed: tpl.ParsedAnswer, states: list) -> list[np.ndarray | None]:
        """Pairs each parsed group with the state of its first M-Prompt token. Text and token streams are
        aligned as sequences of M-Prompt names, so an M-Prompt the model spelled out of ordinary pieces (in the
        text, not a template token: no state) does not shift the others."""
        text_seq, owner = [], []
        for g, group in enumerate(parsed.groups):
            for j, token in enumerate(group.m_prompt_tokens):
                text_seq.append(token)
                owner.append((g, j))
        token_seq = [t for t, _ in states]
        found: dict[int, np.ndarray] = {}
        matcher = difflib.SequenceMatcher(a=text_seq, b=token_seq, autojunk=False)
        for block in matcher.get_matching_blocks():
            for n in range(block.size):
                g, j = owner[block.a + n]
                if j == 0:
                    found[g] = states[block.b + n][1]
        return [found.get(g) for g in range(len(parsed.groups))]

    def _decoder_config(self) -> ml_collections.ConfigDict:
        """``cfg`` with the demo's tiny decoders filled in (``demo_decoders``), resolved on the first decoder use
        so text-only work (captioning evals) never builds them."""
        if not self._resolved:
            from spider_jax import demo_decoders

            self.cfg, self._resolved = demo_decoders.resolve(self.cfg), True
        return self.cfg

    def decoder(self, modality: str):
        """The diffusion pipeline of ``modality`` (loaded once); raises with what to configure when absent."""
        if modality in self._decoders:
            return self._decoders[modality]
        self._decoder_config()
        d = self.cfg.decoders.get(modality.lower())
        folder = d.folder if d is not None else ""
        if not folder or not os.path.exists(os.path.join(folder, "model_index.json")):
            where = f"{folder!r} has no model_index.json" if folder else "no folder is configured"
            raise FileNotFoundError(
                f"no {modality} decoder: {where}; set --config.decoders.{modality.lower()}.folder to "
                f"{DECODER_HINTS[modality]}"
            )
        from spider_jax.diffusion.audio_pipeline import AudioPipeline
        from spider_jax.diffusion.pipelines import ImagePipeline
        from spider_jax.diffusion.video_pipeline import VideoPipeline

        cls = {"IMAGE": ImagePipeline, "AUDIO": AudioPipeline, "VIDEO": VideoPipeline}[modality]
        pipe = cls.from_pretrained(folder, scheduler=d.get("scheduler") or None, dtype=d.get("dtype", "float32"))
        self._decoders[modality] = pipe
        return pipe

    def conditioning(self, modality: str, m_prompts: np.ndarray, t_prompts: Sequence[str]) -> tuple[np.ndarray, Any]:
        """S (G, ...) in the decoder's input shape, and the router weights (G, K), for G groups of ``modality``."""
        spec = self.job.spider.controller.outputs[modality]
        pipe = self.decoder(modality)
        t_e = np.asarray(pipe.encode_prompt(list(t_prompts)), np.float32)
        t_e = t_e.reshape(len(t_prompts), -1, t_e.shape[-1])  # CLAP (G, P) -> (G, 1, P)
        if t_e.shape[1:] != (spec.text_length, spec.width):
            raise ValueError(
                f"the {modality} decoder's text encoder gives T_e {t_e.shape[1:]}, but the controller was trained "
                f"for ({spec.text_length}, {spec.width}): decoder folder and Spider checkpoint do not belong together"
            )
        out = DecodersController(self.job.spider.controller).apply(
            {"params": self.variables["controller"]}, jnp.asarray(m_prompts)[None], jnp.asarray(t_e)[None], modality
        )
        s = np.asarray(out["s"][0])
        return (s[:, 0] if modality == "AUDIO" else s), np.asarray(out["weights"][0])

    def _run_decoder(self, modality: str, s: np.ndarray, seed: int) -> list[dict[str, Any]]:
        d = self.cfg.decoders.get(modality.lower())
        pipe = self.decoder(modality)
        common = dict(num_inference_steps=int(d.steps), guidance_scale=float(d.guidance_scale), seed=seed)
        if modality == "IMAGE":
            images = pipe(s, height=d.get("height") or None, width=d.get("width") or None, **common)
            return [{"image": im} for im in images]
        if modality == "VIDEO":
            size = dict(height=d.get("height") or None, width=d.get("width") or None)
            videos = pipe(s, num_frames=int(d.frames), **size, **common)
            return [{"video": v} for v in videos]
        waves = pipe(s, audio_length_in_s=d.get("seconds") or None, **common)
        return [{"audio": w, "sample_rate": pipe.sample_rate} for w in waves]

    def grounding(self):
        if self._grounding is None:
            from spider_jax.grounding import heads

            self._decoder_config()
            g = self.cfg.grounding
            self._grounding = heads.GroundingHeads.from_config(g)
        return self._grounding

    def realise(self, request: Request, parsed: tpl.ParsedAnswer, states: list, seed: int) -> tuple[list, Any]:
        """The decoders' outputs for every group (errors recorded per group) and the grounding input image."""
        groups = [
            GroupOutput(i, g.modality, g.t_prompt, g.text_before) for i, g in enumerate(parsed.groups)
        ]
        m_states = self._group_states(parsed, states)
        for modality in GENERATED:
            members = [o for o in groups if o.modality == modality]
            ready = []
            for o in members:
                if modality not in self.job.spider.controller.outputs:
                    o.error = f"this Spider has no controller output for {modality}"
                elif m_states[o.index] is None:
                    o.error = "no M-Prompt hidden state (the answer was cut, or the M-Prompt was plain text)"
                else:
                    ready.append(o)
            if ready:
                self._decode_groups(modality, ready, m_states, seed)
        image = None
        grounded = [o for o in groups if o.modality in GROUNDED]
        if grounded:
            image = self._ground(request, grounded)
        return groups, image

    def _decode_groups(self, modality: str, members: list[GroupOutput], m_states: list, seed: int) -> None:
        """One batched decoder call; when it fails, each group alone, so one bad group does not sink the rest."""
        def run(chunk: list[GroupOutput]) -> None:
            m = np.stack([m_states[o.index] for o in chunk])
            s, weights = self.conditioning(modality, m, [o.t_prompt for o in chunk])
            outputs = self._run_decoder(modality, s, seed + chunk[0].index)
            for o, w, produced in zip(chunk, weights, outputs, strict=True):
                o.router_weights = [float(x) for x in np.ravel(w)]
                for key, value in produced.items():
                    setattr(o, key, value)

        try:
            run(members)
        except Exception as batch_error:  # noqa: BLE001 - isolate the failing group(s)
            if len(members) == 1:
                members[0].error = f"{type(batch_error).__name__}: {batch_error}"
                return
            for o in members:
                try:
                    run([o])
                except Exception as e:  # noqa: BLE001
                    o.error = f"{type(e).__name__}: {e}"

    def _ground(self, request: Request, groups: list[GroupOutput]) -> np.ndarray | None:
        images = [p for m, p in request.inputs if m == "IMAGE"]
        if not images:
            for o in groups:
                o.error = f"a {o.modality} group needs an input image to ground in; the request has none"
            return None
        from PIL import Image

        with Image.open(images[0]) as im:
            image = np.asarray(im.convert("RGB"))
        try:
            heads = self.grounding()
        except Exception as e:  # noqa: BLE001 - e.g. the missing-weights error: reported on each group
            for o in groups:
                o.error = f"{type(e).__name__}: {e}"
            return image
        for o in groups:
            try:
                query = o.t_prompt or "object"
                if o.modality == "BOX":
                    o.detections = heads.ground([image], [query])[0]
                else:
                    o.detections, o.masks = heads.ground_and_segment([image], [query])[0]
            except Exception as e:  # noqa: BLE001
                o.error = f"{type(e).__name__}: {e}"
        return image

    def respond(self, requests: Sequence[Request], options: GenerationOptions) -> list[Response]:
        responses = []
        for request, d in zip(requests, self.answer(requests, options), strict=True):
            parsed = tpl.parse_answer(d.text, self.template)
            groups, image = self.realise(request, parsed, d.states, options.seed)
            responses.append(Response(request, d.question, d.text, parsed, groups, len(d.token_ids), d.stopped, image))
        return responses
