"""COCO caption metrics (paper Tab. 1: B@4 / METEOR / CIDEr, AudioCaps SPIDEr) through ``pycocoevalcap``.

Why the library and not our own n-gram code: published caption numbers are only comparable when computed by
the COCO toolkit itself — its PTB tokenizer (Java, lower-cases and drops punctuation), its "closest reference
length" BLEU brevity penalty, METEOR 1.5 with paraphrase tables, and CIDEr-D (clipped n-gram counts, a Gaussian
length penalty, ×10; the COCO "CIDEr" column). Scores are returned on the library's scale (fractions; CIDEr up
to ~10); the paper prints B@4, METEOR and CIDEr ×100 and SPIDEr as a fraction.

Quirks handled here rather than left to surprise a caller:

* the tokenizer only replaces ``\\n``; any other line break (``\\r``, U+2028, ``\\x0b``) silently shifts every
  later caption onto the wrong id, so all whitespace is collapsed first and the line count is checked;
* SPICE needs two Stanford CoreNLP 3.6.0 jars that pycocoevalcap *downloads on first use*; we look for them
  without triggering the download and report SPICE (and SPIDEr) as skipped, with the file names and folder,
  when they are absent. SPICE 1.0 is known to fail on Java ≥ 16 without ``--add-opens`` (fst reflection), so
  those flags are passed through ``JDK_JAVA_OPTIONS``; a SPICE crash is reported as skipped, never a number;
* CIDEr's IDF comes from the evaluated set: one item alone scores 0 whatever its text (log 1 = 0).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import warnings
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Any

METRICS = ("bleu", "meteor", "rouge", "cider", "spice", "spider")
DEFAULT_METRICS = ("bleu", "meteor", "rouge", "cider", "spice", "spider")
BLEU_KEYS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4")
METRIC_KEYS = {
    "bleu": BLEU_KEYS,
    "meteor": ("METEOR",),
    "rouge": ("ROUGE_L",),
    "cider": ("CIDEr",),
    "spice": ("SPICE",),
    "spider": ("SPIDEr",),
}  # metric name → keys of the result (pycocoevalcap's own names, plus SPIDEr)
# SPICE 1.0 (fst 2.47) reflects into JDK internals; Java >= 16 refuses unless these packages are opened.
SPICE_JAVA_OPENS = ("java.lang", "java.util", "java.math", "java.net", "java.text", "java.util.concurrent")
PIP_HINT = "pip install pycocoevalcap==1.2"


class CaptionMetricError(ValueError):
    """Predictions and references do not fit together (ids, types); the message names the offending ids."""


# ------------------------------------------------------------------------------------------ SPICE jars


def spice_lib_dir() -> str:
    """Folder where pycocoevalcap's SPICE expects the Stanford CoreNLP jars (``…/pycocoevalcap/spice/lib``)."""
    spec = importlib.util.find_spec("pycocoevalcap.spice")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"pycocoevalcap is not installed ({PIP_HINT})")
    return os.path.join(list(spec.submodule_search_locations)[0], "lib")


def spice_required_jars() -> tuple[str, ...]:
    """The CoreNLP jar names SPICE loads; taken from the library's own downloader so a new release stays right."""
    from pycocoevalcap.spice import get_stanford_models as gsm  # defines constants only; downloads nothing

    return (f"{gsm.JAR}.jar", f"{gsm.JAR}-models.jar")


def spice_missing_jars(lib_dir: str | None = None) -> list[str]:
    """Paths of the SPICE jars that are absent (empty list: SPICE can run without a download)."""
    lib_dir = spice_lib_dir() if lib_dir is None else lib_dir
    return [
        os.path.join(lib_dir, name) for name in spice_required_jars() if not os.path.isfile(os.path.join(lib_dir, name))
    ]


def spice_unavailable_reason() -> str | None:
    """Why SPICE cannot run here (``None`` when it can). Never starts pycocoevalcap's download."""
    if shutil.which("java") is None:
        return "java not found on PATH (SPICE runs spice-1.0.jar)"
    missing = spice_missing_jars()
    if not missing:
        return None
    names = ", ".join(os.path.basename(p) for p in missing)
    return (
        f"Stanford CoreNLP jars missing: {names}. Place them in {os.path.dirname(missing[0])} (both come from "
        "stanford-corenlp-full-2015-12-09.zip); pycocoevalcap would otherwise try to download them on first use"
    )


@contextlib.contextmanager
def _spice_java_options() -> Iterator[None]:
    """``JDK_JAVA_OPTIONS`` opening the JDK packages SPICE's cache reflects into (read by Java ≥ 9 only)."""
    old = os.environ.get("JDK_JAVA_OPTIONS")
    opens = " ".join(f"--add-opens=java.base/{p}=ALL-UNNAMED" for p in SPICE_JAVA_OPENS)
    os.environ["JDK_JAVA_OPTIONS"] = f"{old} {opens}" if old else opens
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("JDK_JAVA_OPTIONS", None)
        else:
            os.environ["JDK_JAVA_OPTIONS"] = old


# ------------------------------------------------------------------------------------------ inputs


def _clean(text: str) -> str:
    """One line: every Unicode whitespace run (incl. ``\\r``, U+2028) becomes one space (see module doc)."""
    return " ".join(text.split())


def _check_inputs(
    predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str] | str], restrict: bool
) -> tuple[list[Hashable], dict[Hashable, str], dict[Hashable, list[str]]]:
    def show(ids: Iterable[Hashable]) -> str:
        ids = list(ids)
        return f"{[*ids[:10]]}{f' … ({len(ids)} in all)' if len(ids) > 10 else ''}"

    no_refs = [k for k in predictions if k not in references]
    if no_refs:
        raise CaptionMetricError(f"predictions without references for ids {show(no_refs)}")
    if not restrict:
        no_pred = [k for k in references if k not in predictions]
        if no_pred:
            raise CaptionMetricError(
                f"references without predictions for ids {show(no_pred)} (pass restrict_to_predictions=True to "
                "score only the predicted ids)"
            )
    ids = list(predictions)
    preds, refs = {}, {}
    for k in ids:
        p = predictions[k]
        if not isinstance(p, str):
            raise CaptionMetricError(f"prediction for id {k!r} is {type(p).__name__}, expected str")
        r = references[k]
        r = [r] if isinstance(r, str) else list(r)
        if not r or not all(isinstance(c, str) for c in r):
            raise CaptionMetricError(f"references for id {k!r} must be a non-empty list of strings, got {r!r}")
        preds[k], refs[k] = _clean(p), [_clean(c) for c in r]
    return ids, preds, refs


def ptb_tokenize(captions: Mapping[Hashable, Sequence[str]]) -> dict[Hashable, list[str]]:
    """COCO's PTB tokenization (Java) of every caption, lower-cased, punctuation dropped; one JVM for all."""
    if shutil.which("java") is None:
        raise RuntimeError("java not found on PATH: the COCO PTB tokenizer is a Java program (or tokenize=False)")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    keys = list(captions)
    index = {k: i for i, k in enumerate(keys)}  # the library's ids must be plain; keep ours aside
    payload = {i: [{"caption": _clean(c)} for c in captions[k]] for k, i in index.items()}
    out = PTBTokenizer().tokenize(payload)
    result = {}
    for k, i in index.items():
        got = out.get(i, [])
        if len(got) != len(payload[i]):  # the library zips lines with ids: a lost line shifts everything
            raise RuntimeError(f"PTB tokenizer returned {len(got)} lines for id {k!r}, expected {len(payload[i])}")
        result[k] = got
    return result


# ------------------------------------------------------------------------------------------ scoring


def _bleu(gts: dict, res: dict) -> tuple[list[float], list[list[float]]]:
    from pycocoevalcap.bleu.bleu import Bleu

    score, scores = Bleu(4).compute_score(gts, res, verbose=0)
    return [float(s) for s in score], [[float(v) for v in per_n] for per_n in scores]


def _meteor(gts: dict, res: dict) -> tuple[float, list[float]]:
    from pycocoevalcap.meteor.meteor import Meteor

    # '|||' separates fields in METEOR's stdin protocol; the library strips it from hypotheses only.
    gts = {k: [c.replace("|||", " ") for c in v] for k, v in gts.items()}
    scorer = Meteor()
    try:
        score, scores = scorer.compute_score(gts, res)
    except (ValueError, OSError) as e:  # the JVM died: float('') on its closed stdout, or a broken pipe
        raise RuntimeError(f"METEOR (meteor-1.5.jar) stopped answering ({e}); is Java working?") from e
    finally:
        proc = scorer.meteor_p  # stop the JVM now rather than whenever the object is collected
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        with contextlib.suppress(OSError):
            proc.stdin.close()  # already closed, Meteor.__del__ does not hit the broken pipe again
        if scorer.lock.locked():  # compute_score raised holding it: Meteor.__del__ would then block forever
            scorer.lock.release()
    return float(score), [float(s) for s in scores]


def _spice(gts: dict, res: dict) -> tuple[float, list[float]]:
    from pycocoevalcap.spice.spice import Spice

    with _spice_java_options():
        score, scores = Spice().compute_score(gts, res)
    return float(score), [float(s["All"]["f"]) for s in scores]


def caption_scores(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str] | str],
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    tokenize: bool = True,
    restrict_to_predictions: bool = False,
    per_item: bool = False,
) -> dict[str, Any]:
    """COCO caption metrics of ``predictions[id]`` against ``references[id]`` (one or more captions each).

    ``metrics`` ⊆ ``METRICS``: bleu → Bleu_1..Bleu_4, meteor → METEOR, rouge → ROUGE_L, cider → CIDEr (CIDEr-D),
    spice → SPICE, spider → SPIDEr = (CIDEr + SPICE) / 2. Returns those numbers, ``count`` (items scored) and
    ``skipped`` {metric: reason} for metrics that could not run here (never a placeholder number); with
    ``per_item`` also ``per_item`` {id: {metric: score}} (BLEU is corpus-level, so not the mean of its items).
    ``tokenize=False`` skips the PTB tokenizer for text that is already tokenized and lower-cased.
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown caption metrics {unknown}; choose from {METRICS}")
    if importlib.util.find_spec("pycocoevalcap") is None:
        raise ImportError(f"caption metrics need pycocoevalcap ({PIP_HINT})")
    wanted = set(metrics)
    if "spider" in wanted:
        wanted |= {"cider", "spice"}
    ids, preds, refs = _check_inputs(predictions, references, restrict_to_predictions)
    out: dict[str, Any] = {"count": len(ids), "skipped": {}}
    if not ids:
        out["skipped"] = {name: "no predictions to score" for m in metrics for name in METRIC_KEYS[m]}
        return out

    if tokenize:
        tagged = {("ref", k): refs[k] for k in ids} | {("hyp", k): [preds[k]] for k in ids}
        tokens = ptb_tokenize(tagged)  # one JVM start for references and predictions together
        gts = {i: tokens[("ref", k)] for i, k in enumerate(ids)}
        res = {i: tokens[("hyp", k)] for i, k in enumerate(ids)}
    else:
        gts = {i: refs[k] for i, k in enumerate(ids)}
        res = {i: [preds[k]] for i, k in enumerate(ids)}

    values: dict[str, float] = {}
    items: dict[str, list[float]] = {}
    skipped: dict[str, str] = {}
    if "bleu" in wanted:
        score, scores = _bleu(gts, res)
        for n, key in enumerate(BLEU_KEYS):
            values[key], items[key] = score[n], scores[n]
    if "meteor" in wanted:
        if shutil.which("java") is None:
            skipped["METEOR"] = "java not found on PATH (METEOR runs meteor-1.5.jar)"
        else:
            values["METEOR"], items["METEOR"] = _meteor(gts, res)
    if "rouge" in wanted:
        from pycocoevalcap.rouge.rouge import Rouge

        score, scores = Rouge().compute_score(gts, res)
        values["ROUGE_L"], items["ROUGE_L"] = float(score), [float(s) for s in scores]
    if "cider" in wanted:
        from pycocoevalcap.cider.cider import Cider

        score, scores = Cider().compute_score(gts, res)
        values["CIDEr"], items["CIDEr"] = float(score), [float(s) for s in scores]
    if "spice" in wanted:
        reason = spice_unavailable_reason()
        if reason is None:
            try:
                values["SPICE"], items["SPICE"] = _spice(gts, res)
            except (subprocess.CalledProcessError, OSError, ValueError, KeyError) as e:
                reason = f"spice-1.0.jar failed ({e}); see its Java output above (it was built for Java 8)"
                warnings.warn(f"SPICE skipped: {reason}", stacklevel=2)
        if reason is not None:
            skipped["SPICE"] = reason
    if "spider" in wanted:
        if "SPICE" in values:
            values["SPIDEr"] = (values["CIDEr"] + values["SPICE"]) / 2
            items["SPIDEr"] = [(c + s) / 2 for c, s in zip(items["CIDEr"], items["SPICE"], strict=True)]
        else:
            skipped["SPIDEr"] = f"needs SPICE, which was skipped: {skipped['SPICE']}"
    # CIDEr / SPICE computed only to form SPIDEr are not reported.
    public = {name for m in metrics for name in METRIC_KEYS[m]}
    out.update({k: v for k, v in values.items() if k in public})
    out["skipped"] = {k: v for k, v in skipped.items() if k in public}
    if per_item:
        out["per_item"] = {k: {m: v[i] for m, v in items.items() if m in public} for i, k in enumerate(ids)}
    return out
