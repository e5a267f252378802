"""Any-to-Many Instruction Template (paper §2.3, Fig. 4): tokens, question/answer formatting, answer parser.

Question: ``[INPUT] [TaskPrompt] <X> <X-Token> </X> instruction``
Answer:   ``[OUT] T_1 <X_1> T-Prompt [X_10] </X_1> … T_n <X_n> … </X_n> [END]``

Each modality group is a begin/end pair around the T-Prompt (text for the decoder's own text encoder) and the
M-Prompt tokens (whose hidden states drive the Decoders-Controller). The parser never raises: whatever the
model produced, it returns the best-effort groups plus warnings naming what was wrong.

The reference PyTorch code spells some tokens differently (``[OUTPUT]``, ``<X-Placeholder>``, TaskPrompt after
the instruction); :class:`TemplateConfig` selects either spelling, so its checkpoints and data can be read.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence

MODALITIES = ("IMAGE", "AUDIO", "VIDEO", "BOX", "MASK")
INPUT_MODALITIES = ("IMAGE", "AUDIO", "VIDEO")
TASK_PROMPTS = ("TEXT", "IMAGE", "AUDIO", "VIDEO", "BOX", "MASK", "SMARTMULTIMODAL", "SPECIFICMULTIMODAL")
SMART, SPECIFIC = "SMARTMULTIMODAL", "SPECIFICMULTIMODAL"


@dataclasses.dataclass(frozen=True)
class TemplateConfig:
    """Spellings and sizes of the template. Defaults follow the paper; :meth:`reference` the public code."""

    input_token: str = "[INPUT]"
    out_token: str = "[OUT]"
    end_token: str = "[END]"
    slot_suffix: str = "-Token"  # input slot token: <IMAGE-Token> (paper Fig. 4b); reference: -Placeholder
    num_mprompt_tokens: int = 1  # M-Prompt tokens [X0] … [X{n-1}] per group (paper: 1)
    task_prompt_first: bool = True  # paper: "[INPUT] [TaskPrompt] …"; reference: TaskPrompt after the question

    @classmethod
    def reference(cls) -> TemplateConfig:
        return cls(out_token="[OUTPUT]", slot_suffix="-Placeholder", task_prompt_first=False)

    def begin(self, modality: str) -> str:
        return f"<{modality}>"

    def end(self, modality: str) -> str:
        return f"</{modality}>"

    def slot(self, modality: str) -> str:
        return f"<{modality}{self.slot_suffix}>"

    def mprompt(self, modality: str, index: int = 0) -> str:
        return f"[{modality}{index}]"

    def mprompts(self, modality: str) -> list[str]:
        return [self.mprompt(modality, i) for i in range(self.num_mprompt_tokens)]

    def task_prompt(self, task: str) -> str:
        if task not in TASK_PROMPTS:
            raise ValueError(f"unknown TaskPrompt {task!r}; choose from {TASK_PROMPTS}")
        return f"[{task}]"

    def special_tokens(self) -> list[str]:
        """Every token the tokenizer must hold as a single id, in a fixed order (ids are stable across runs)."""
        tokens = [self.input_token, self.out_token, self.end_token]
        tokens += [self.task_prompt(t) for t in TASK_PROMPTS]
        for m in MODALITIES:
            tokens += [self.begin(m), self.end(m), *self.mprompts(m)]
        tokens += [self.slot(m) for m in INPUT_MODALITIES]
        return list(dict.fromkeys(tokens))  # [IMAGE] is both a TaskPrompt and nothing else: dedupe defensively

    def token_descriptions(self) -> dict[str, str]:
        """Plain words for every special token: their embeddings seed the new rows (``resize_embeddings``).

        Why: rows that all start as the same mean vector are indistinguishable to the LLM (``<VIDEO>`` in a
        question reads like ``<AUDIO>``) and only drift apart slowly; starting ``<VIDEO>`` near "video" makes the
        tokens distinct from step one and ties them to the words users write. Descriptions are pairwise distinct.
        """
        words = {self.input_token: "input", self.out_token: "output", self.end_token: "end"}
        for task in TASK_PROMPTS:
            words[self.task_prompt(task)] = {SMART: "smart multimodal", SPECIFIC: "specific multimodal"}.get(
                task, f"{task.lower()} task"
            )
        for m in MODALITIES:
            words[self.begin(m)] = m.lower()
            words[self.end(m)] = f"end of {m.lower()}"
            for i, token in enumerate(self.mprompts(m)):
                words[token] = f"{m.lower()} prompt {i}"
        for m in INPUT_MODALITIES:
            words[self.slot(m)] = f"{m.lower()} input"
        return {t: words[t] for t in self.special_tokens()}


DEFAULT = TemplateConfig()


def task_for(modalities: Sequence[str]) -> str:
    """TaskPrompt for the requested output modalities: TEXT, one single-modal prompt, or SMARTMULTIMODAL."""
    unique = list(dict.fromkeys(modalities))
    unknown = [m for m in unique if m not in MODALITIES]
    if unknown:
        raise ValueError(f"unknown modalities {unknown}; choose from {MODALITIES}")
    if not unique:
        return "TEXT"
    return unique[0] if len(unique) == 1 else SMART


def format_question(instruction: str, task: str, inputs: Sequence[str] = (), config: TemplateConfig = DEFAULT) -> str:
    """``[INPUT] [Task] <X> <X-Token> </X> … instruction`` (input slots are replaced by embeddings later)."""
    for m in inputs:
        if m not in INPUT_MODALITIES:
            raise ValueError(f"input modality {m!r} is not one of {INPUT_MODALITIES}")
    slots = " ".join(f"{config.begin(m)} {config.slot(m)} {config.end(m)}" for m in inputs)
    parts = [config.input_token]
    if config.task_prompt_first:
        parts.append(config.task_prompt(task))
    parts += [p for p in (slots, instruction.strip()) if p]
    if not config.task_prompt_first:
        parts.append(config.task_prompt(task))
    return " ".join(parts)


@dataclasses.dataclass(frozen=True)
class Group:
    """One modality group: text response before it, the modality, and its T-Prompt."""

    modality: str
    t_prompt: str
    text_before: str = ""


def format_group(group: Group, config: TemplateConfig = DEFAULT) -> str:
    if group.modality not in MODALITIES:
        raise ValueError(f"unknown modality {group.modality!r}; choose from {MODALITIES}")
    inner = " ".join(p for p in (group.t_prompt.strip(), *config.mprompts(group.modality)) if p)
    body = f"{config.begin(group.modality)} {inner} {config.end(group.modality)}"
    return f"{group.text_before.strip()} {body}" if group.text_before.strip() else body


def format_answer(groups: Iterable[Group], trailing_text: str = "", config: TemplateConfig = DEFAULT) -> str:
    """``[OUT] T_1 <X_1> T-Prompt [X_10] </X_1> … trailing [END]``."""
    parts = [config.out_token, *(format_group(g, config) for g in groups)]
    if trailing_text.strip():
        parts.append(trailing_text.strip())
    parts.append(config.end_token)
    return " ".join(parts)


# ------------------------------------------------------------------------------------------ boxes


def format_box(box: Sequence[float]) -> str:
    """``[x1, y1, x2, y2]`` normalised to [0, 1] with 3 decimals (values are clipped into range)."""
    if len(box) != 4:
        raise ValueError(f"a box has 4 coordinates (x1, y1, x2, y2), got {len(box)}")
    return "[" + ", ".join(f"{min(max(float(v), 0.0), 1.0):.3f}" for v in box) + "]"


_BOX_RE = re.compile(r"\[\s*([01](?:\.\d+)?)\s*,\s*([01](?:\.\d+)?)\s*,\s*([01](?:\.\d+)?)\s*,\s*([01](?:\.\d+)?)\s*\]")


def parse_boxes(text: str) -> list[tuple[float, float, float, float]]:
    """Every ``[x1, y1, x2, y2]`` with coordinates in [0, 1] found in ``text``."""
    boxes = []
    for m in _BOX_RE.finditer(text):
        values = tuple(float(v) for v in m.groups())
        if all(0.0 <= v <= 1.0 for v in values):
            boxes.append(values)
    return boxes


# ------------------------------------------------------------------------------------------ parser


@dataclasses.dataclass(frozen=True)
class ParsedGroup:
    text_before: str
    modality: str
    t_prompt: str
    m_prompt_tokens: tuple[str, ...]
    char_span: tuple[int, int]  # [start, end) of the group in the parsed string, tags included


@dataclasses.dataclass(frozen=True)
class ParsedAnswer:
    groups: tuple[ParsedGroup, ...]
    trailing_text: str
    warnings: tuple[str, ...]

    @property
    def modalities(self) -> list[str]:
        return [g.modality for g in self.groups]

    @property
    def text(self) -> str:
        """The text response with the groups taken out (what a chat UI shows between media)."""
        pieces = [g.text_before for g in self.groups] + [self.trailing_text]
        return " ".join(p for p in pieces if p)


def _tag_regex(config: TemplateConfig) -> re.Pattern:
    specials = "|".join(re.escape(t) for t in (config.out_token, config.end_token))
    return re.compile(rf"(?P<special>{specials})|<(?P<close>/?)(?P<tag>[A-Za-z]+)>|\[(?P<mp>[A-Z]+)(?P<idx>\d+)\]")


def parse_answer(text: str, config: TemplateConfig = DEFAULT) -> ParsedAnswer:
    """Parses generated text into ordered modality groups. Never raises; problems become warnings."""
    if not isinstance(text, str):
        return ParsedAnswer((), "", (f"expected a string, got {type(text).__name__}",))
    warnings: list[str] = []
    groups: list[ParsedGroup] = []
    start = text.find(config.out_token)
    if start < 0:
        warnings.append(f"no {config.out_token} token: parsing from the start of the text")
        start = 0
    else:
        start += len(config.out_token)
    stop = text.find(config.end_token, start)
    if stop < 0:
        warnings.append(f"no {config.end_token} token: parsing to the end of the text")
        stop = len(text)

    cursor = start  # end of the last consumed group (text_before starts here)
    open_at: int | None = None  # index of the '<X>' of the group being read
    open_mod = ""
    inner: list[str] = []
    mprompts: list[str] = []
    inner_from = 0

    def close(end_index: int, content_end: int) -> None:
        nonlocal open_at, cursor
        inner.append(text[inner_from:content_end])
        t_prompt = " ".join("".join(inner).split())
        if not mprompts:
            warnings.append(f"<{open_mod}> group at {open_at} has no M-Prompt token")
        if not t_prompt:
            warnings.append(f"<{open_mod}> group at {open_at} has an empty T-Prompt")
        groups.append(
            ParsedGroup(
                text_before=" ".join(text[cursor:open_at].split()),
                modality=open_mod,
                t_prompt=t_prompt,
                m_prompt_tokens=tuple(mprompts),
                char_span=(open_at, end_index),
            )
        )
        cursor = end_index
        open_at = None

    for m in _tag_regex(config).finditer(text, start, stop):
        if m.group("special"):
            warnings.append(f"stray {m.group('special')} at {m.start()}")
            continue
        if m.group("tag") is not None:
            tag, closing = m.group("tag"), bool(m.group("close"))
            if tag not in MODALITIES:
                warnings.append(f"unknown tag <{'/' if closing else ''}{tag}> at {m.start()} kept as text")
                continue
            if not closing:
                if open_at is not None:
                    warnings.append(f"<{open_mod}> at {open_at} not closed before <{tag}> at {m.start()}")
                    close(m.start(), m.start())
                open_at, open_mod, inner, mprompts, inner_from = m.start(), tag, [], [], m.end()
            elif open_at is None:
                warnings.append(f"stray </{tag}> at {m.start()} ignored")
            else:
                if tag != open_mod:
                    warnings.append(f"<{open_mod}> at {open_at} closed by </{tag}> at {m.start()}")
                close(m.end(), m.start())
            continue
        # an M-Prompt-shaped token [Xi]
        modality, token = m.group("mp"), m.group(0)
        if modality not in MODALITIES:
            continue  # e.g. a TaskPrompt echoed in the answer; plain text
        if open_at is None:
            warnings.append(f"M-Prompt {token} at {m.start()} outside a group: made a group with an empty T-Prompt")
            open_at, open_mod, inner, mprompts, inner_from = m.start(), modality, [], [token], m.end()
            close(m.end(), m.end())
            continue
        if modality != open_mod:
            warnings.append(f"M-Prompt {token} inside <{open_mod}> group at {open_at}")
        inner.append(text[inner_from : m.start()])
        inner_from = m.end()
        mprompts.append(token)
    if open_at is not None:
        warnings.append(f"<{open_mod}> at {open_at} never closed")
        close(stop, stop)
    trailing = " ".join(text[cursor:stop].split())
    return ParsedAnswer(tuple(groups), trailing, tuple(warnings))
