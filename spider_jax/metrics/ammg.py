"""Any-to-Many Modalities Generation scoring (paper §3.2, Tab. 4) at the text level.

The paper divides every many-modal answer into its modality groups and evaluates each group independently: FID
for image groups, FD for audio, FID for video, B@4 for the text (Tab. 4's Text-to-Xs column is the TGI travel
guides). This module does the part that needs no media: it splits answers with the template parser, aligns
produced groups with reference groups (k-th group of a modality with the k-th of the same modality, so one
missing image does not shift every later audio), and hands back per-group records telling the media scorers
which produced group stands for which reference group (``produced_index`` / ``reference_index``, the positions
of generated and reference media). It also scores what no paper table does but every AMMG run needs: did the
model produce the modalities it was asked for (precision / recall / F1 of modality multisets, exact order).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from spider_jax import template as tpl
from spider_jax.metrics.captioning import caption_scores


@dataclasses.dataclass(frozen=True)
class GroupRecord:
    """One aligned modality group of one answer; either side is ``None`` when that side has no such group."""

    answer_id: Hashable
    modality: str
    occurrence: int  # this is the k-th group of ``modality`` in its answer (0-based): the alignment key
    produced_index: int | None  # position among the produced answer's groups (its generated media file)
    reference_index: int | None  # position among the reference groups (``Instance.outputs`` index)
    produced_t_prompt: str | None = None
    reference_t_prompt: str | None = None
    produced_text_before: str | None = None
    reference_text_before: str | None = None

    @property
    def status(self) -> str:
        """``matched`` (both sides), ``missing`` (requested, not produced) or ``extra`` (produced, not asked)."""
        if self.produced_index is not None and self.reference_index is not None:
            return "matched"
        return "missing" if self.produced_index is None else "extra"


Reference = str | tpl.ParsedAnswer | Sequence[str]


def _parsed(answer: str | tpl.ParsedAnswer, config: tpl.TemplateConfig) -> tpl.ParsedAnswer:
    return answer if isinstance(answer, tpl.ParsedAnswer) else tpl.parse_answer(answer, config)


def _reference_groups(reference: Reference, config: tpl.TemplateConfig) -> list[tuple[str, str | None, str | None]]:
    """(modality, t_prompt, text_before) of each reference group; a bare modality list has no texts."""
    if isinstance(reference, str | tpl.ParsedAnswer):
        return [(g.modality, g.t_prompt, g.text_before) for g in _parsed(reference, config).groups]
    return [(str(m), None, None) for m in reference]


def align_groups(
    produced: str | tpl.ParsedAnswer,
    reference: Reference,
    answer_id: Hashable = None,
    config: tpl.TemplateConfig = tpl.DEFAULT,
) -> list[GroupRecord]:
    """Pairs the k-th produced group of each modality with the k-th reference group of that modality.

    ``reference`` is a reference answer (text or parsed) or just the requested modalities (``Instance.targets``).
    Records come in reference order (matched or missing), then the extra produced groups in produced order.
    """
    ref = _reference_groups(reference, config)
    got = _parsed(produced, config).groups
    by_key: dict[tuple[str, int], int] = {}
    seen: Counter[str] = Counter()
    for i, g in enumerate(got):
        by_key[(g.modality, seen[g.modality])] = i
        seen[g.modality] += 1
    records, used = [], set()
    seen = Counter()
    for j, (modality, t_prompt, text_before) in enumerate(ref):
        k = seen[modality]
        seen[modality] += 1
        i = by_key.get((modality, k))
        used.add(i)
        g = got[i] if i is not None else None
        records.append(
            GroupRecord(
                answer_id,
                modality,
                k,
                i,
                j,
                g.t_prompt if g else None,
                t_prompt,
                g.text_before if g else None,
                text_before,
            )
        )
    for (modality, k), i in sorted(by_key.items(), key=lambda item: item[1]):
        if i not in used:
            g = got[i]
            records.append(GroupRecord(answer_id, modality, k, i, None, g.t_prompt, None, g.text_before, None))
    return records


# ------------------------------------------------------------------------------ instruction following


def modality_prf(produced: Sequence[str], requested: Sequence[str]) -> tuple[float, float, float]:
    """Precision, recall, F1 of produced vs requested modality multisets.

    Empty vs empty is a perfect 1.0 (a caption asked for, text given); one side empty is 0. The F1 equals
    ``spider_eval.modality_f1`` (the training-time template check), so both report the same number.
    """
    if not produced and not requested:
        return 1.0, 1.0, 1.0
    overlap = sum((Counter(produced) & Counter(requested)).values())
    if overlap == 0:
        return 0.0, 0.0, 0.0
    precision, recall = overlap / len(produced), overlap / len(requested)
    return precision, recall, 2 * precision * recall / (precision + recall)


def modality_following(produced: Sequence[Sequence[str]], requested: Sequence[Sequence[str]]) -> dict[str, float]:
    """How well answers produce the requested modalities, over answers aligned by position.

    Macro: mean of per-answer precision / recall / F1 (``modality_prf``). Micro: pooled group counts (all answers
    empty: 1.0). ``exact_order``: produced sequence equals the requested one (``spider_eval``'s
    ``exact_modality_groups``); ``exact_multiset``: same groups in any order; ``same_count``: same number.
    """
    if len(produced) != len(requested):
        raise ValueError(f"{len(produced)} produced modality lists but {len(requested)} requested ones")
    n = len(produced)
    if n == 0:
        raise ValueError("no answers to score")
    per = [modality_prf(list(p), list(r)) for p, r in zip(produced, requested, strict=True)]
    overlap = sum(sum((Counter(p) & Counter(r)).values()) for p, r in zip(produced, requested, strict=True))
    n_produced, n_requested = sum(len(p) for p in produced), sum(len(r) for r in requested)
    micro_p = overlap / n_produced if n_produced else float(n_requested == 0)
    micro_r = overlap / n_requested if n_requested else float(n_produced == 0)
    micro_f1 = 2 * micro_p * micro_r / (micro_p + micro_r) if micro_p + micro_r else 0.0
    return {
        "answers": n,
        "macro_precision": sum(p for p, _, _ in per) / n,
        "macro_recall": sum(r for _, r, _ in per) / n,
        "macro_f1": sum(f for _, _, f in per) / n,
        "micro_precision": micro_p,
        "micro_recall": micro_r,
        "micro_f1": micro_f1,
        "exact_order": sum(tuple(p) == tuple(r) for p, r in zip(produced, requested, strict=True)) / n,
        "exact_multiset": sum(Counter(p) == Counter(r) for p, r in zip(produced, requested, strict=True)) / n,
        "same_count": sum(len(p) == len(r) for p, r in zip(produced, requested, strict=True)) / n,
    }


# ------------------------------------------------------------------------------ text of answers


def response_text(answer: str | tpl.ParsedAnswer, config: tpl.TemplateConfig = tpl.DEFAULT) -> str:
    """The text response of an answer: groups (tags, T-Prompts, M-Prompts) and ``[OUT]``/``[END]`` taken out.

    Plain text without template tokens comes back as it is (whitespace collapsed).
    """
    return _parsed(answer, config).text


def tgi_bleu4(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, str | Sequence[str]],
    *,
    tokenize: bool = True,
    config: tpl.TemplateConfig = tpl.DEFAULT,
) -> dict[str, Any]:
    """Tab. 4 Text-to-Xs B@4: COCO BLEU-4 of the answers' text responses against the reference guides' text.

    Both sides go through :func:`response_text`, so a reference may be a built TGI answer (``Instance.answer``,
    where groups of unrequested modalities were already turned into text) or a plain-text guide.
    """
    preds = {k: response_text(v, config) for k, v in predictions.items()}
    refs = {k: [response_text(r, config) for r in ([v] if isinstance(v, str) else v)] for k, v in references.items()}
    scores = caption_scores(preds, refs, ("bleu",), tokenize=tokenize)
    return {"count": scores["count"], "Bleu_4": scores.get("Bleu_4"), "skipped": scores["skipped"]}


def ammg_scores(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, Reference],
    *,
    text_metrics: Sequence[str] = ("bleu",),
    tokenize: bool = True,
    config: tpl.TemplateConfig = tpl.DEFAULT,
) -> dict[str, Any]:
    """Splits and aligns every answer, scores modality following and the text responses.

    ``references[id]`` is the reference answer (text or parsed) or only the requested modalities. Returns
    ``records`` (:class:`GroupRecord` list for the media scorers), ``following`` (:func:`modality_following`),
    ``text`` (caption metrics of response texts vs reference texts; answers whose reference has no text are left
    out, and it is skipped when none has any), ``parser_warnings`` {id: warnings} for malformed answers.
    """
    missing = [k for k in references if k not in predictions]
    extra = [k for k in predictions if k not in references]
    if missing or extra:
        raise ValueError(f"ids differ: no prediction for {missing[:10]}, no reference for {extra[:10]}")
    records: list[GroupRecord] = []
    produced, requested, warnings = [], [], {}
    text_preds, text_refs = {}, {}
    for k in references:
        got = tpl.parse_answer(predictions[k], config)
        ref = references[k]
        records += align_groups(got, ref, k, config)
        produced.append(got.modalities)
        requested.append([m for m, _, _ in _reference_groups(ref, config)])
        if got.warnings:
            warnings[k] = got.warnings
        if isinstance(ref, str | tpl.ParsedAnswer) and response_text(ref, config):
            text_preds[k], text_refs[k] = got.text, [response_text(ref, config)]
    if text_refs:
        text = caption_scores(text_preds, text_refs, text_metrics, tokenize=tokenize)
    else:
        text = {"count": 0, "skipped": {"text": "no reference answer has a text response"}}
    return {
        "records": records,
        "following": modality_following(produced, requested) if references else {},
        "text": text,
        "parser_warnings": warnings,
    }
