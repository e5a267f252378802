"""Any-to-Many Instruction Template: formatting, the never-raising parser (property tests), boxes."""

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spider_jax.template import (
    DEFAULT,
    MODALITIES,
    Group,
    TemplateConfig,
    format_answer,
    format_box,
    format_question,
    parse_answer,
    parse_boxes,
    task_for,
)

PAPER_ANSWER = (
    "[OUT] Here is the generated image of a dog: <IMAGE> dog [IMAGE0] </IMAGE>, and the dog's bark: "
    "<AUDIO> dog's bark [AUDIO0] </AUDIO> [END]"
)


def test_paper_example_parses():
    parsed = parse_answer(PAPER_ANSWER)
    assert parsed.warnings == ()
    assert parsed.modalities == ["IMAGE", "AUDIO"]
    image, audio = parsed.groups
    assert (image.text_before, image.t_prompt, image.m_prompt_tokens) == (
        "Here is the generated image of a dog:",
        "dog",
        ("[IMAGE0]",),
    )
    assert (audio.text_before, audio.t_prompt) == (", and the dog's bark:", "dog's bark")
    assert PAPER_ANSWER[slice(*image.char_span)] == "<IMAGE> dog [IMAGE0] </IMAGE>"


def test_question_formats():
    q = format_question("Generate an image and a video similar to this image.", "SMARTMULTIMODAL", ["IMAGE"])
    assert (
        q == "[INPUT] [SMARTMULTIMODAL] <IMAGE> <IMAGE-Token> </IMAGE> Generate an image and a video similar to "
        "this image."
    )
    ref = format_question("Describe it.", "TEXT", ["AUDIO"], TemplateConfig.reference())
    assert ref == "[INPUT] <AUDIO> <AUDIO-Placeholder> </AUDIO> Describe it. [TEXT]"
    with pytest.raises(ValueError, match="input modality"):
        format_question("x", "TEXT", ["BOX"])
    with pytest.raises(ValueError, match="unknown TaskPrompt"):
        format_question("x", "PICTURE")


def test_task_for_and_special_tokens():
    assert task_for([]) == "TEXT"
    assert task_for(["VIDEO"]) == "VIDEO"
    assert task_for(["IMAGE", "AUDIO", "IMAGE"]) == "SMARTMULTIMODAL"
    tokens = TemplateConfig(num_mprompt_tokens=2).special_tokens()
    assert len(tokens) == len(set(tokens))
    for m in MODALITIES:
        assert {f"<{m}>", f"</{m}>", f"[{m}0]", f"[{m}1]"} <= set(tokens)
    assert {"[INPUT]", "[OUT]", "[END]", "[SMARTMULTIMODAL]", "[SPECIFICMULTIMODAL]", "<VIDEO-Token>"} <= set(tokens)


@pytest.mark.parametrize(
    "text, modalities, warning",
    [
        ("[OUT] a <IMAGE> cat [IMAGE0] [END]", ["IMAGE"], "never closed"),
        ("[OUT] <IMAGE> cat [IMAGE0] </AUDIO> [END]", ["IMAGE"], "closed by </AUDIO>"),
        ("<VIDEO> waves [VIDEO0] </VIDEO>", ["VIDEO"], "no [OUT]"),
        ("[OUT] <AUDIO> rain [AUDIO0] </AUDIO>", ["AUDIO"], "no [END]"),
        ("[OUT] <IMAGE> a <AUDIO> b [AUDIO0] </AUDIO> [END]", ["IMAGE", "AUDIO"], "not closed before"),
        ("[OUT] text </IMAGE> more [END]", [], "stray </IMAGE>"),
        ("[OUT] <SMELL> roses </SMELL> [END]", [], "unknown tag <SMELL>"),
        ("[OUT] look [IMAGE0] here [END]", ["IMAGE"], "outside a group"),
        ("[OUT] <IMAGE> </IMAGE> [END]", ["IMAGE"], "empty T-Prompt"),
        ("[OUT] <MASK> the dog </MASK> [END]", ["MASK"], "no M-Prompt"),
        ("[OUT] <IMAGE> x [AUDIO0] </IMAGE> [END]", ["IMAGE"], "inside <IMAGE>"),
        ("[OUT] [OUT] <BOX> the cup [BOX0] </BOX> [END]", ["BOX"], "stray [OUT]"),
    ],
)
def test_malformed_answers_give_groups_and_warnings(text, modalities, warning):
    parsed = parse_answer(text)
    assert parsed.modalities == modalities
    assert any(warning in w for w in parsed.warnings), parsed.warnings


def test_repeated_groups_keep_order_and_reference_spelling():
    cfg = TemplateConfig.reference()
    text = "[OUTPUT] Attractions: <IMAGE> Forbidden City [IMAGE0] </IMAGE> Food: <IMAGE> duck [IMAGE0] </IMAGE>[END]"
    parsed = parse_answer(text, cfg)
    assert parsed.warnings == ()
    assert [g.t_prompt for g in parsed.groups] == ["Forbidden City", "duck"]
    assert parsed.text == "Attractions: Food:"


def test_boxes_format_and_parse():
    assert format_box([0.1, 0.25, 1.2, -0.1]) == "[0.100, 0.250, 1.000, 0.000]"
    text = "The cup is at [0.100, 0.250, 0.500, 0.750] and [0.2,0.2,0.3,0.3]; not [1, 2, 3]."
    assert parse_boxes(text) == [(0.1, 0.25, 0.5, 0.75), (0.2, 0.2, 0.3, 0.3)]
    with pytest.raises(ValueError, match="4 coordinates"):
        format_box([0.1, 0.2])


PLAIN = st.text(alphabet=string.ascii_letters + string.digits + " .,:;!?'-", max_size=30)
PROMPT = PLAIN.filter(lambda s: s.strip() != "")


@st.composite
def groups(draw):
    n = draw(st.integers(0, 5))
    return [Group(draw(st.sampled_from(MODALITIES)), draw(PROMPT), draw(PLAIN)) for _ in range(n)]


@settings(max_examples=300, deadline=None)
@given(groups(), PLAIN, st.integers(1, 3), st.booleans())
def test_format_then_parse_round_trips(gs, trailing, n_mprompts, reference):
    cfg = TemplateConfig.reference() if reference else TemplateConfig()
    cfg = TemplateConfig(**{**cfg.__dict__, "num_mprompt_tokens": n_mprompts})
    parsed = parse_answer(format_answer(gs, trailing, cfg), cfg)
    assert parsed.warnings == ()
    assert [(g.modality, g.t_prompt, g.text_before) for g in parsed.groups] == [
        (g.modality, " ".join(g.t_prompt.split()), " ".join(g.text_before.split())) for g in gs
    ]
    assert all(len(g.m_prompt_tokens) == n_mprompts for g in parsed.groups)
    assert parsed.trailing_text == " ".join(trailing.split())


FRAGMENTS = list("<>/[]0123 abIMAGEAUDIOVIDEOBXSK") + [
    "[OUT]",
    "[END]",
    "<IMAGE>",
    "</IMAGE>",
    "[IMAGE0]",
    "<AUDIO>",
    "[AUDIO0]",
    "</VIDEO>",
    "<MASK>",
    "[BOX1]",
]
TAGGY = st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=200), TAGGY))
def test_parser_never_raises(text):
    parsed = parse_answer(text, DEFAULT)
    for g in parsed.groups:
        assert g.modality in MODALITIES
        assert 0 <= g.char_span[0] <= g.char_span[1] <= len(text)
    assert isinstance(parsed.warnings, tuple)
