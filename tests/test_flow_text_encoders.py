"""The flow families' own text encoders in the test host (devkit/host_nodes/gs_test_nodes/tiny_text_encoders.py):
the real tokenizers and text-encoder classes at toy width, so conditioning has each family's real token layout.
docs/text_encoder_layouts.md writes the layouts down; the hand-checked values below are the same ones."""
import pytest
import torch

from devkit import graphs, harness
from devkit.tolerance import PATHS, assert_close_across_paths

PROMPT = "a red castle, a blue river"
WORDS = ("red", "castle", "blue", "river")

# Hand-checked from the shipped tokenizers. CLIP BPE (keys "l", "g"): BOS 49406, a 320, red 736, castle 3540, "," 267,
# blue 1746, river 2473, EOS 49407. T5 SentencePiece ("t5xxl"; "_" stands for its word-start mark U+2581): no BOS;
# "_" 3, "a" 9, "_red" 1131, "_castle" 13243,
# "," 6, "_blue" 1692, "_river" 4033, EOS 1, pad 0. Qwen2.5 BPE ("qwen25_7b", "qwen3_4b"): "a" 64, " red" 2518,
# " castle" 32584, "," 11, " a" 264, " blue" 6303, " river" 14796 inside the family's chat template.
CLIP_IDS = [49406, 320, 736, 3540, 267, 320, 1746, 2473, 49407]
T5_IDS = [3, 9, 1131, 13243, 6, 3, 9, 1692, 4033, 1]
QWEN_IDS = [64, 2518, 32584, 11, 264, 6303, 14796]
_CLIP_WORDS = dict(zip(WORDS, (736, 3540, 1746, 2473)))
_QWEN_WORDS = dict(zip(WORDS, (2518, 32584, 6303, 14796)))
WORD_IDS = {"l": _CLIP_WORDS, "g": _CLIP_WORDS, "t5xxl": dict(zip(WORDS, (1131, 13243, 1692, 4033))),
            "qwen25_7b": _QWEN_WORDS, "qwen3_4b": _QWEN_WORDS}
CLIP_POS = {"red": 2, "castle": 3, "blue": 6, "river": 7}  # after BOS
T5_POS = {"red": 2, "castle": 3, "blue": 7, "river": 8}  # "a" is two pieces, no BOS
QWEN_POS = {"red": 1, "castle": 2, "blue": 5, "river": 6}  # within the user text

# kind -> {key: (chunk lengths, ids at the start of chunk 0, {word: position in that key's chunk 0})},
#         context rows, context width, pooled width, {word: context rows it lands on (one per key that reaches
#         the context)}
LAYOUTS = {
    "flux_dev": ({"l": ([77], CLIP_IDS, CLIP_POS), "t5xxl": ([256], T5_IDS, T5_POS)},
                 256, 64, 32, {w: [p] for w, p in T5_POS.items()}),
    "flux_schnell": None,  # = flux_dev, below
    "chroma": ({"t5xxl": ([10], T5_IDS, T5_POS)}, 10, 64, None, {w: [p] for w, p in T5_POS.items()}),
    "sd35": ({"l": ([77], CLIP_IDS, CLIP_POS), "g": ([77], CLIP_IDS, CLIP_POS), "t5xxl": ([77], T5_IDS, T5_POS)},
             154, 4096, 80, {w: [CLIP_POS[w], 77 + T5_POS[w]] for w in WORDS}),
    "qwen_image": ({"qwen25_7b": ([46], None, {w: 34 + p for w, p in QWEN_POS.items()})},
                   12, 64, None, {w: [p] for w, p in QWEN_POS.items()}),
    "z_image": ({"qwen3_4b": ([15], None, {w: 3 + p for w, p in QWEN_POS.items()})},
                15, 64, None, {w: [3 + p] for w, p in QWEN_POS.items()}),
}
LAYOUTS["flux_schnell"] = LAYOUTS["flux_dev"]  # the same text encoder
QWEN_IMAGE_DROP = 34  # system template + "<|im_start|>user\n": what QwenImageTEModel cuts off the front


@pytest.fixture(scope="module")
def modules(host):
    nodes = harness.test_nodes_module()
    return nodes.tiny_text_encoders, nodes.tiny_flow


@pytest.fixture(scope="module")
def clips():
    return {}  # kind -> its tiny family CLIP (seed 0), built once per module


def family_clip(modules, clips, kind):
    if kind not in clips:
        clips[kind] = modules[0].tiny_family_clip(kind, 0)
    return clips[kind]


def context_rows(kind: str, tokens: dict) -> dict:
    """Where each word's token lands in the context, from the layout rules (docs/text_encoder_layouts.md), given
    the positions of the word's token in clip.tokenize's per-key lists."""
    keys, *_ = LAYOUTS[kind]
    rows = {}
    for word in WORDS:
        at = {key: keys[key][2][word] for key in tokens}
        if kind in ("flux_dev", "flux_schnell", "chroma"):
            rows[word] = [at["t5xxl"]]  # T5 tokens are the context; CLIP-L only gives Flux its pooled vector
        elif kind == "sd35":
            clip_rows = 77 * len(tokens["l"])  # every CLIP chunk is 77 rows (L and G side by side in the width)
            assert at["l"] == at["g"]
            rows[word] = [at["l"], clip_rows + at["t5xxl"]]
        elif kind == "qwen_image":
            rows[word] = [at["qwen25_7b"] - QWEN_IMAGE_DROP]
        else:
            rows[word] = [at["qwen3_4b"]]  # Z-Image keeps its whole template
    return rows


@pytest.mark.parametrize("kind", list(LAYOUTS))
def test_token_layout_per_key_and_context_position_of_each_word(modules, clips, kind):
    """Pure: clip.tokenize's keys, chunk lengths and token ids are the hand-checked ones, and each word's token
    lands on the hand-checked context rows."""
    clip = family_clip(modules, clips, kind)
    keys, rows, width, pooled, word_rows = LAYOUTS[kind]
    tokens = clip.tokenize(PROMPT)
    assert sorted(tokens) == sorted(keys)
    for key, (chunks, ids, positions) in keys.items():
        assert [len(chunk) for chunk in tokens[key]] == chunks, key
        got = [t for t, _ in tokens[key][0]]
        if ids is not None:
            assert got[:len(ids)] == ids, key
        for word, position in positions.items():
            assert got[position] == WORD_IDS[key][word], (key, word)
    assert context_rows(kind, tokens) == word_rows
    if kind == "qwen_image":
        ids = [t for t, _ in tokens["qwen25_7b"][0]]
        assert ids[:3] == [151644, 8948, 198]  # <|im_start|>system\n
        assert ids[QWEN_IMAGE_DROP - 3:QWEN_IMAGE_DROP] == [151644, 872, 198]  # <|im_start|>user\n
        assert ids[QWEN_IMAGE_DROP:QWEN_IMAGE_DROP + 7] == QWEN_IDS
        assert ids[-5:] == [151645, 198, 151644, 77091, 198]  # <|im_end|>\n<|im_start|>assistant\n, kept
    if kind == "z_image":
        ids = [t for t, _ in tokens["qwen3_4b"][0]]
        assert ids[:3] == [151644, 872, 198] and ids[3:10] == QWEN_IDS


def _encode_part(encoder, chunks):
    """One encoder of a family model run on its own token chunks (ids only), the chunks' outputs concatenated."""
    out = encoder.encode([[t for t, _ in chunk] for chunk in chunks])
    return out[0].reshape(1, -1, out[0].shape[-1]), out[1]


@pytest.mark.parametrize("kind", list(LAYOUTS))
def test_context_is_the_families_encoders_outputs_in_the_documented_order(modules, clips, kind):
    """The encoded context against each encoder run alone on its own tokens: which encoder's rows sit where."""
    clip = family_clip(modules, clips, kind)
    tokens = clip.tokenize(PROMPT)
    out = clip.encode_from_tokens(tokens, return_pooled=True, return_dict=True)
    cond, pooled = out["cond"], out.get("pooled_output")
    _, rows, width, pooled_width, _ = LAYOUTS[kind]
    assert tuple(cond.shape) == (1, rows, width)
    assert (pooled is None) == (pooled_width is None) and (pooled is None or tuple(pooled.shape) == (1, pooled_width))
    model = clip.cond_stage_model
    close = dict(rtol=1e-5, why=PATHS)
    with torch.no_grad():
        if kind in ("flux_dev", "flux_schnell"):
            t5, _ = _encode_part(model.t5xxl, tokens["t5xxl"])
            _, l_pooled = _encode_part(model.clip_l, tokens["l"])
            assert_close_across_paths(cond, t5, **close)
            assert_close_across_paths(pooled, l_pooled[:1], **close)
        elif kind == "chroma":
            assert_close_across_paths(cond, _encode_part(model.t5xxl, tokens["t5xxl"])[0], **close)
        elif kind == "sd35":
            l_out, l_pooled = _encode_part(model.clip_l, tokens["l"])
            g_out, g_pooled = _encode_part(model.clip_g, tokens["g"])
            t5, _ = _encode_part(model.t5xxl, tokens["t5xxl"])
            assert_close_across_paths(cond[:, :77, :32], l_out, **close)
            assert_close_across_paths(cond[:, :77, 32:80], g_out, **close)
            assert not bool(cond[:, :77, 80:].any())  # the CLIP rows are zero-padded to T5's width
            assert_close_across_paths(cond[:, 77:], t5, **close)
            assert_close_across_paths(pooled, torch.cat([l_pooled[:1], g_pooled[:1]], dim=-1), **close)
        else:
            name = "qwen25_7b" if kind == "qwen_image" else "qwen3_4b"
            full, _ = _encode_part(getattr(model, name), tokens[name])
            drop = QWEN_IMAGE_DROP if kind == "qwen_image" else 0
            assert_close_across_paths(cond, full[:, drop:], **close)


@pytest.mark.parametrize("kind, name", [("qwen_image", "qwen25_7b"), ("z_image", "qwen3_4b")])
def test_a_word_change_moves_the_causal_lm_context_from_that_words_row_on(modules, clips, kind, name):
    """Independent of the layout code: the LM is causal, so replacing the last word changes the context from that
    word's documented row on and leaves the rows before it as they were."""
    clip = family_clip(modules, clips, kind)
    river = LAYOUTS[kind][4]["river"][0]
    at = river + (QWEN_IMAGE_DROP if kind == "qwen_image" else 0)  # its position in clip.tokenize's list
    tokens_a, tokens_b = clip.tokenize(PROMPT), clip.tokenize(PROMPT.replace("river", "road"))
    assert [t for t, _ in tokens_a[name][0]][:at] == [t for t, _ in tokens_b[name][0]][:at]
    assert tokens_a[name][0][at][0] == 14796 and tokens_b[name][0][at][0] != 14796
    a, b = clip.encode_from_tokens(tokens_a), clip.encode_from_tokens(tokens_b)
    assert a.shape == b.shape
    assert_close_across_paths(a[:, :river], b[:, :river], rtol=1e-5, why=PATHS)
    scale = float(a[:, river].abs().max())
    assert float((a[:, river] - b[:, river]).abs().max()) > 1e-3 * scale


LONG = "a red castle, " + "castle " * 80 + "a blue river"


def test_sd35_a_long_prompt_adds_clip_chunks_and_moves_the_t5_block(modules, clips):
    """Past 75 CLIP tokens: two 77-row CLIP chunks, then the T5 block from row 154; 'river' is in CLIP chunk 1."""
    clip = family_clip(modules, clips, "sd35")
    tokens = clip.tokenize(LONG)
    assert [len(c) for c in tokens["l"]] == [77, 77] and [len(c) for c in tokens["t5xxl"]] == [90]
    # hand-checked: CLIP chunk 0 is BOS + 75 tokens (a red castle , castle x71) + EOS, chunk 1 is BOS + castle x9
    # + a blue river + EOS + padding; T5: _ a _red _castle , + _castle x80 + _ a _blue _river </s> (90 tokens)
    assert tokens["l"][1][12][0] == 2473 and tokens["t5xxl"][0][88][0] == 4033
    river_rows = [77 * 1 + 12, 77 * 2 + 88]  # CLIP row 77 k + p, T5 row 77 C + p
    assert river_rows == [89, 242]
    cond = clip.encode_from_tokens(tokens)
    assert tuple(cond.shape) == (1, 154 + 90, 4096)
    model = clip.cond_stage_model
    with torch.no_grad():
        l_out, _ = _encode_part(model.clip_l, tokens["l"])
        t5, _ = _encode_part(model.t5xxl, tokens["t5xxl"])
    assert_close_across_paths(cond[:, :154, :32], l_out, rtol=1e-5, why=PATHS)
    assert_close_across_paths(cond[:, 154:], t5, rtol=1e-5, why=PATHS)


def test_weights_are_seeded(modules):
    te, _ = modules
    one, again, other = (te.tiny_family_clip("chroma", s).cond_stage_model.state_dict() for s in (0, 0, 1))
    assert all(torch.equal(one[k], again[k]) for k in one)  # the very same construction: exact
    assert not torch.equal(one["t5xxl.transformer.shared.weight"], other["t5xxl.transformer.shared.weight"])


def test_an_unknown_text_encoder_or_family_is_refused(modules):
    te, tiny_flow = modules
    with pytest.raises(ValueError, match="text_encoder must be one of"):
        tiny_flow.tiny_flow_model("flux_dev", 0, "t5")
    with pytest.raises(ValueError, match="kind must be one of"):
        te.tiny_family_clip("sd15", 0)


def txt2img(kind: str, text_encoder: str | None = "family") -> dict:
    prompt = graphs.flow_txt2img(kind, PROMPT, text_encoder)
    prompt["cond"] = {"class_type": "GS_TestCaptureConditioning", "inputs": {"key": "cond", "conditioning": ["pos", 0]}}
    return prompt


@pytest.mark.parametrize("kind", ["flux_dev", "sd35", "qwen_image", "chroma", "z_image"])
def test_family_text_encoder_conditions_a_txt2img_run_through_the_executor(host, captured, modules, clips, kind):
    host.run(txt2img(kind))
    _, rows, width, pooled_width, _ = LAYOUTS[kind]
    cond = captured["cond"]
    assert tuple(cond.shape) == (1, rows, width)
    if pooled_width is None:
        assert "cond_pooled" not in captured
    else:
        assert tuple(captured["cond_pooled"].shape) == (1, pooled_width)
    clip = family_clip(modules, clips, kind)  # the same seed outside the executor: the node's CLIP is this one
    assert_close_across_paths(cond, clip.encode_from_tokens(clip.tokenize(PROMPT)), rtol=1e-5,
                              why=PATHS)
    image, latent = captured["image"], captured["latent"]
    assert tuple(image.shape) == (1, 64, 64, 3) and bool(torch.isfinite(image).all())
    assert latent.shape[1] == 16 and latent.shape[-2:] == (8, 8) and bool(torch.isfinite(latent).all())
    assert float(latent.std()) > 0


def test_the_default_is_still_the_tiny_sd1_clip(host, captured):
    """Without text_encoder (every graph written before it), the checkpoint gives the 768-wide tiny SD1 CLIP."""
    prompt = txt2img("flux_dev", text_encoder=None)
    for name in ("latent", "sample", "decode", "out", "out_latent", "guided", "neg"):
        del prompt[name]
    host.run(prompt)
    assert tuple(captured["cond"].shape) == (1, 77, 768) and tuple(captured["cond_pooled"].shape) == (1, 768)


def test_tiny_sd35_pos_embed_is_the_fixed_sincos_table(modules):
    """SD3's MMDiT leaves its pos_embed buffer as torch.empty for the checkpoint to fill; the tiny model fills it
    with the fixed 2-D sin-cos table (uninitialised memory gave NaN latents in some processes)."""
    import comfy.ldm.modules.diffusionmodules.mmdit as mmdit
    _, tiny_flow = modules
    for text_encoder in ("tiny_clip", "family"):
        pos_embed = tiny_flow.tiny_flow_model("sd35", 0, text_encoder).model.diffusion_model.pos_embed
        table = torch.from_numpy(mmdit.get_2d_sincos_pos_embed(pos_embed.shape[-1], 64)).float()
        assert torch.equal(pos_embed[0], table)  # exact: a copy of the same table
