"""``python -m spider_jax.generate`` end to end on the tiny config: every file written, items in answer order,
per-group failures isolated, bad input rejected clearly, the pseudo X-to-Xs dataset resumable; and the S that
generation feeds a decoder equals the S of the training forward pass on the same answer."""

import json
import os
import re

import numpy as np
import pytest
from conftest import SAMPLES_DIR, tiny_spider_flags

from spider_jax import template as tpl

SAMPLES = SAMPLES_DIR
IMAGE = os.path.join(SAMPLES, "coco", "images", "000000000001.png")
GROUPS = [
    tpl.Group("IMAGE", "a red bus on a street", "Here is a picture."),
    tpl.Group("AUDIO", "rain falling on a roof", "And the sound:"),
    tpl.Group("VIDEO", "a dog running on a beach", "A clip:"),
    tpl.Group("BOX", "the bus", "Where it is:"),
    tpl.Group("MASK", "the bus", "Its outline:"),
]
ANSWER = tpl.format_answer(GROUPS, "Enjoy!")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tiny_spider_run):
    return tiny_spider_run


def _generate(run_dir, out, *extra):
    from spider_jax import generation_cli

    run, base = run_dir
    argv = ["generate", *tiny_spider_flags(base), f"--checkpoint={run}", f"--out={out}", "--max_new_tokens=200", *extra]
    return generation_cli.main(argv)


def test_cli_writes_every_file_with_items_in_answer_order(run_dir, tmp_path, capsys):
    out = tmp_path / "response"
    rc = _generate(run_dir, out, "--prompt=Show me a bus and where it is", f"--image={IMAGE}",
                   f"--answer_prefix={ANSWER}")  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    manifest = json.loads((out / "response.json").read_text())
    assert [g["modality"] for g in manifest["groups"]] == [g.modality for g in GROUPS]
    assert all(g["ok"] for g in manifest["groups"]), [g["error"] for g in manifest["groups"]]
    assert manifest["stopped_at_end"] and manifest["answer"].strip().endswith(tpl.DEFAULT.end_token)
    expected = ["01_image.png", "02_audio.wav", "03_video.gif", "04_box.png", "05_mask.png", "05_mask_masks.json"]
    for name in expected + ["response.md", "index.html", "boxes.json"]:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    from PIL import Image

    assert Image.open(out / "01_image.png").size == (64, 64)
    import soundfile

    wave, rate = soundfile.read(out / "02_audio.wav")
    assert rate == 16000 and len(wave) == 16000  # decoders.audio.seconds = 1.0
    assert Image.open(out / "03_video.gif").n_frames == 6
    boxes = json.loads((out / "boxes.json").read_text())
    assert [b["modality"] for b in boxes] == ["BOX", "MASK"] and all(b["query"] == "the bus" for b in boxes)
    # the page: every item inline, in answer order, with its text before it; media inlined (self-contained)
    page = (out / "index.html").read_text()
    assert re.findall(r"data-modality='(\w+)'", page) == [g.modality for g in GROUPS]
    positions = [page.index(g.text_before) for g in GROUPS] + [page.index("Enjoy!")]
    assert positions == sorted(positions)
    assert page.count("src='data:") == 5 and "src='0" not in page
    markdown = (out / "response.md").read_text()
    links = [markdown.index(f"({name})") for name in ("01_image.png", "02_audio.wav", "03_video.gif", "04_box.png")]
    assert links == sorted(links)


def test_a_failing_decoder_loses_only_its_group(run_dir, tmp_path):
    out = tmp_path / "partial"
    rc = _generate(run_dir, out, "--prompt=Show me", f"--answer_prefix={ANSWER}",
                   "--config.decoders.video.folder=/nonexistent/zeroscope")  # fmt: skip
    assert rc == 0
    groups = {g["modality"]: g for g in json.loads((out / "response.json").read_text())["groups"]}
    assert not groups["VIDEO"]["ok"] and "decoders.video.folder" in groups["VIDEO"]["error"]
    # no input image: the grounding groups say so; image and audio are still produced
    assert not groups["BOX"]["ok"] and "input image" in groups["BOX"]["error"]
    assert groups["IMAGE"]["ok"] and groups["AUDIO"]["ok"]
    assert (out / "01_image.png").is_file() and not (out / "03_video.gif").exists()
    assert "failed: " in (out / "index.html").read_text()


def test_bad_input_is_rejected_with_a_clear_error(run_dir, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    cases = [
        (["--prompt=   "], "prompt is empty"),
        (["--prompt=hi", f"--image={broken}"], "broken.png"),
        (["--prompt=hi", f"--audio={tmp_path / 'missing.wav'}"], "does not exist"),
        (["--prompt=" + "word " * 600], "exceeds the model's"),
        (["--prompt=hi", "--task=SMELL"], "SMELL"),
    ]
    for extra, message in cases:
        assert _generate(run_dir, tmp_path / "bad", *extra) == 2
        assert message in capsys.readouterr().err, message
    from spider_jax.any_to_many import GenerationInputError, Request, check_request

    with pytest.raises(GenerationInputError, match="unknown input modality 'SMELL'"):
        check_request(Request("hi", (("SMELL", IMAGE),)))


def test_pseudo_dataset_is_written_and_resumes(run_dir, tmp_path):
    out = tmp_path / "pseudo"
    assert _generate(run_dir, out, "--pseudo_dataset=t2i_ts", "--num_samples=2", "--max_new_tokens=24") == 0
    records = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["t2i_ts_000000", "t2i_ts_000001"]
    for r in records:  # t2i_ts: T-Prompt-augmented requests for one or more generated modalities
        assert r["requested"] and set(r["requested"]) <= {"IMAGE", "AUDIO", "VIDEO"}
        assert r["question"].startswith(tpl.DEFAULT.input_token) and isinstance(r["answer"], str)
    assert _generate(run_dir, out, "--pseudo_dataset=t2i_ts", "--num_samples=3", "--max_new_tokens=24") == 0
    records = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["t2i_ts_000000", "t2i_ts_000001", "t2i_ts_000002"]
    assert all((out / r["id"] / "response.json").is_file() for r in records)


def test_generation_conditioning_equals_the_training_forward_pass(run_dir):
    """S for each group from decoding-time capture == the controller output of spider_forward on the same
    question + answer (the path the M-Alignment loss trained)."""
    import jax.numpy as jnp
    from absl import flags
    from ml_collections import config_flags as cf

    from spider_jax import generation_cli
    from spider_jax.any_to_many import GenerationOptions, Request, SpiderGenerator
    from spider_jax.models.spider import spider_forward

    run, base = run_dir
    fv = flags.FlagValues()
    argv = ["x", *tiny_spider_flags(base)]
    cf.DEFINE_config_file("config", "configs/tiny.py", "", flag_values=fv, sys_argv=argv)
    fv(argv)
    generator = generation_cli.load_generator(fv.config, run)
    request = Request("Show me", answer_prefix=ANSWER)
    (decoded,) = generator.answer([request], GenerationOptions(max_new_tokens=200))
    assert decoded.stopped
    # the same answer and states with the LLM split over the config's (2, 2, 2) mesh of the 8 simulated devices
    meshed = SpiderGenerator(generator.job, generator.variables, fv.config.copy_and_resolve_references())
    assert meshed.mesh is None
    cfg = fv.config.copy_and_resolve_references()
    cfg.generate.mesh_decode = True
    meshed = SpiderGenerator(generator.job, generator.variables, cfg)
    assert meshed.mesh is not None
    (on_mesh,) = meshed.answer([request], GenerationOptions(max_new_tokens=200))
    assert on_mesh.token_ids == decoded.token_ids
    for (name_a, a), (name_b, b) in zip(on_mesh.states, decoded.states, strict=True):
        assert name_a == name_b
        np.testing.assert_allclose(a, b, atol=1e-4)
    m_states = generator._group_states(tpl.parse_answer(decoded.text), decoded.states)
    job = generator.job
    q_ids, a_ids = job.tokenizer.encode(decoded.question, add_bos=True), decoded.token_ids
    ids = np.asarray([q_ids + a_ids], np.int32)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids, bool)}
    for k, g in enumerate(GROUPS[:3]):
        first = job.tokenizer.single_token_id(tpl.DEFAULT.mprompt(g.modality))
        position = len(q_ids) + a_ids.index(first)
        s_gen, _ = generator.conditioning(g.modality, m_states[k][None], [g.t_prompt])
        t_e = np.asarray(generator.decoder(g.modality).encode_prompt([g.t_prompt])).reshape(1, 1, -1, s_gen.shape[-1])
        x = g.modality.lower()
        fwd = spider_forward(job.spider, generator.variables, {
            **batch, f"{x}_positions": np.asarray([[position]], np.int32), f"{x}_te": jnp.asarray(t_e)})
        s_train = np.asarray(fwd["controller"][g.modality]["s"][0, 0])
        np.testing.assert_allclose(s_gen[0].reshape(s_train.shape), s_train, atol=2e-4)
