"""Does a trained Spider follow the Any-to-Many template? Greedy answers to held-out TMM questions, parsed.

A question counts as followed when the parsed answer holds exactly the requested modality groups, in order
(``Instance.targets``; none for captioning). Questions come from the stage-3 mixture with the eval seed, a
stream the training stages never drew from (training uses other seeds), so template × sample combinations are
mostly unseen.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from spider_jax import input_pipeline as ip
from spider_jax import template as tpl
from spider_jax import tmm
from spider_jax.generate import greedy_generate, left_pad
from spider_jax.models.spider import input_embeddings, llm_variables


def _prompt_batch(job, instances: list[tmm.Instance]) -> dict[str, np.ndarray]:
    questions = [job.tokenizer.encode(inst.question, add_bos=True) for inst in instances]
    ids, mask = left_pad(questions, job.tokenizer.pad_id)
    max_inputs = job.pipeline.max_inputs
    positions = np.full((len(instances), max_inputs), -1, np.int32)
    codes = np.zeros((len(instances), max_inputs), np.int32)
    keys = np.zeros((len(instances), max_inputs), np.int64)
    for row, (inst, question) in enumerate(zip(instances, questions, strict=True)):
        offset = ids.shape[1] - len(question)
        slots = [i for i, t in enumerate(question) if t in job.template_ids.slot_to_modality][:max_inputs]
        for k, (pos, (modality, path)) in enumerate(zip(slots, inst.inputs, strict=False)):
            positions[row, k] = offset + pos
            codes[row, k] = ip.modality_code(modality)
            keys[row, k] = ip.media_key(path, job.pipeline.media_root)
    width = job.spider.encoder_width
    if job.media_store is not None:
        embeddings, _ = job.media_store.lookup(keys, allow_missing=True)
    else:
        embeddings = np.zeros(keys.shape + (width,), np.float32)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "input_positions": positions,
        "input_modality": codes,
        "input_embeddings": embeddings.astype(np.float32),
    }


def generate_answers(job, variables: Any, instances: list[tmm.Instance], max_new_tokens: int) -> list[str]:
    """Greedy answers (decoded text, stopping at ``[END]``) to the instances' questions."""
    end_id = job.tokenizer.single_token_id(job.pipeline.template.end_token)
    llm_vars = llm_variables(job.spider, variables)
    embed = jax.jit(lambda v, b: input_embeddings(job.spider, v, b))
    batch = _prompt_batch(job, instances)
    prompt_embeds = embed(variables, batch)
    tokens, lengths = greedy_generate(
        job.spider.llm,
        llm_vars,
        batch["input_ids"],
        batch["attention_mask"],
        max_new_tokens,
        eos_id=end_id,
        pad_id=job.tokenizer.pad_id,
        prompt_embeds=prompt_embeds,
    )
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    return [job.tokenizer.decode(tokens[i, : lengths[i]].tolist()) for i in range(len(instances))]


def template_following(job, variables: Any) -> dict[str, Any]:
    cfg = job.cfg.eval
    mixture = tmm.STAGE_MIXTURES["stage3"]
    from spider_jax.spider_train import build_options

    stream = ip.instance_dataset(mixture, job.pools, job.sources, seed=cfg.seed, opts=build_options(job.cfg))
    instances = [stream[i] for i in range(cfg.questions)]
    answers: list[str] = []
    for start in range(0, len(instances), cfg.batch_size):
        answers += generate_answers(job, variables, instances[start : start + cfg.batch_size], cfg.max_new_tokens)
    followed, examples, warnings, same_count, f1s = 0, [], 0, 0, []
    by_dataset: dict[str, list[int]] = {}
    for inst, answer in zip(instances, answers, strict=True):
        parsed = tpl.parse_answer(answer, job.pipeline.template)
        produced = tuple(g.modality for g in parsed.groups)
        ok = produced == tuple(inst.targets)
        followed += ok
        same_count += len(produced) == len(inst.targets)
        f1s.append(modality_f1(produced, inst.targets))
        by_dataset.setdefault(inst.dataset, []).append(int(ok))
        warnings += bool(parsed.warnings)
        if len(examples) < 4 or (not ok and len(examples) < 8):
            examples.append({"question": inst.question, "answer": answer, "requested": inst.targets, "ok": ok})
    n = max(len(instances), 1)
    return {
        "questions": len(instances),
        "exact_modality_groups": followed / n,
        "same_number_of_groups": same_count / n,
        "mean_modality_f1": float(np.mean(f1s)) if f1s else 0.0,
        "exact_by_dataset": {k: f"{sum(v)}/{len(v)}" for k, v in sorted(by_dataset.items())},
        "answers_with_parser_warnings": warnings,
        "examples": examples,
    }


def modality_f1(produced: tuple[str, ...], requested: tuple[str, ...]) -> float:
    """F1 of the produced vs requested modality multisets (1.0 when both are empty: a caption asked, given)."""
    from collections import Counter

    if not produced and not requested:
        return 1.0
    overlap = sum((Counter(produced) & Counter(requested)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(produced), overlap / len(requested)
    return 2 * precision * recall / (precision + recall)
