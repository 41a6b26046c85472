"""Text conditioning: the offline MiniLM encoder, digit prompts, and the cross-attention U-Net."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import socket
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch.nn import functional as F

from genlab.data.prompts import (
    HELD_OUT_TEMPLATES,
    TRAIN_TEMPLATES,
    WORDS,
    all_train_prompts,
    heldout_prompts,
    train_prompt,
    train_prompts,
)
from genlab.errors import GenlabError
from genlab.models.text import CONTEXT_DIM, TextEncoder, is_null, model_dir, pooled, trim
from genlab.models.unet import UNet
from genlab.sampling import guided_text

# UNet(4, 48, (1, 2, 2), 1, (2,), num_classes=10), measured before cross-attention was added.
CLASS_UNET_PARAMS = 2_512_516
CLASS_UNET_KEYS = 163
CLASS_UNET_KEYS_SHA1 = "c14a954f63e3a48fa56621623657862dc2949a2e"  # sha1 of ",".join(state_dict keys, in order)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """These tensors are tiny: one intra-op thread is several times faster than two on a busy 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _no_network(*_: object, **__: object) -> None:
    raise OSError("test_text: network access during encoder load")


@pytest.fixture(scope="module")
def encoded() -> tuple[TextEncoder, float, str]:
    """One encoder for the module, loaded offline with sockets disabled; (encoder, seconds, output)."""
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", _no_network)
        start = time.perf_counter()
        enc = TextEncoder()
        seconds = time.perf_counter() - start
    return enc, seconds, out.getvalue()


@pytest.fixture
def enc(encoded: tuple[TextEncoder, float, str]) -> TextEncoder:
    return encoded[0]


# ------------------------------------------------------------------------------------------ encoder


def test_encoder_loads_offline_from_site_packages_silently(encoded: tuple[TextEncoder, float, str]) -> None:
    enc, seconds, output = encoded
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    assert Path(model_dir()).resolve().is_relative_to(site)
    assert Path(enc.model.name_or_path).resolve() == Path(model_dir()).resolve()
    assert output == ""  # no download or "Loading weights" progress
    assert not any(p.requires_grad for p in enc.model.parameters()) and not enc.model.training
    assert seconds < 60


def test_encode_shapes_and_mask(enc: TextEncoder) -> None:
    prompts = ["the digit seven", "a handwritten 3", "", "seven"]
    tokens, mask = enc.encode(prompts)
    assert tokens.shape == (4, 16, CONTEXT_DIM) and tokens.dtype == torch.float32
    assert mask.shape == (4, 16) and mask.dtype == torch.bool
    assert not tokens.requires_grad
    assert mask.sum(1).tolist() == [enc.token_count(p) for p in prompts]
    assert mask.sum(1).tolist()[2] == 2  # "" is [CLS] [SEP]
    assert torch.equal(mask, mask.cummin(1).values)  # real tokens first, then padding
    assert torch.equal(tokens[~mask], torch.zeros_like(tokens[~mask]))  # padding is exact zeros
    long = " ".join(["seven"] * 40)
    t_long, m_long = enc.encode([long])
    assert t_long.shape == (1, 16, CONTEXT_DIM) and bool(m_long.all())  # truncated to max_length


def test_encode_deterministic_memoised_and_batch_independent(enc: TextEncoder) -> None:
    prompts = ["the digit seven", "number two"]
    a_tokens, a_mask = enc.encode(prompts)
    start = time.perf_counter()
    b_tokens, b_mask = enc.encode(prompts)
    assert time.perf_counter() - start < 0.05  # memoised
    assert torch.equal(a_tokens, b_tokens) and torch.equal(a_mask, b_mask)
    enc.clear_cache()
    c_tokens, c_mask = enc.encode(["number two", "something else entirely", "the digit seven"])
    assert torch.equal(c_mask[[2, 0]], a_mask)
    assert torch.allclose(c_tokens[[2, 0]], a_tokens, atol=1e-5)


def test_pooled_matches_sentence_transformers_reference(enc: TextEncoder) -> None:
    # all-MiniLM-L6-v2 sentence vectors (first 5 dims) from SentenceTransformer(...).encode
    reference = torch.tensor([[-0.066855, 0.044516, -0.046469, -0.024628, -0.087633],
                              [-0.121974, 0.024643, -0.026357, -0.007930, -0.041183]])
    vectors = pooled(*enc.encode(["the digit seven", "a handwritten 3"]))
    assert torch.allclose(vectors[:, :5], reference, atol=2e-5)


def test_semantics_of_pooled_embeddings(enc: TextEncoder) -> None:
    def cos(a: str, b: str) -> float:
        v = pooled(*enc.encode([a, b]))
        return float(v[0] @ v[1])

    # True of this model: the shared phrasing outweighs the number word ...
    assert cos("the digit seven", "the digit two") > cos("the digit seven", "a handwritten seven")
    # ... but within a phrasing the number counts, and words and numerals agree.
    assert cos("the digit seven", "the digit 7") > cos("the digit seven", "the digit two")
    words, digits = pooled(*enc.encode(list(WORDS))), pooled(*enc.encode([str(d) for d in range(10)]))
    assert (words @ digits.T).argmax(1).tolist() == list(range(10))
    # held-out phrasings retrieve the right digit among the train prompts "the digit {word}"
    train = pooled(*enc.encode([f"the digit {w}" for w in WORDS]))
    for template in HELD_OUT_TEMPLATES[:2]:
        held = pooled(*enc.encode([template.format(word=w, digit=d) for d, w in enumerate(WORDS)]))
        assert (held @ train.T).argmax(1).tolist() == list(range(10))


def test_is_null() -> None:
    assert is_null(["", "  ", "seven"]).tolist() == [True, True, False]


def test_prompt_table_round_trip_without_the_transformer(enc: TextEncoder, tmp_path: Path) -> None:
    prompts = ["the digit seven", "a handwritten 3", "", "the digit seven", " ".join(["seven"] * 40)]
    enc.save(tmp_path / "table.safetensors", prompts)
    table = TextEncoder(table=tmp_path / "table.safetensors")
    tokens, mask = table.encode(prompts)
    want_tokens, want_mask = enc.encode(prompts)
    assert torch.equal(tokens, want_tokens) and torch.equal(mask, want_mask)  # the same bits, duplicates and all
    assert [table.token_count(p) for p in prompts[:4]] == [enc.token_count(p) for p in prompts[:4]]
    assert not table.loaded  # every answer came from the table
    assert table.token_count(prompts[4]) == enc.token_count(prompts[4]) > 16  # truncated: the tokenizer counts
    assert table.loaded
    new_tokens, _ = table.encode(["number two"])  # a prompt not in the table: encoded
    assert torch.allclose(new_tokens, enc.encode(["number two"])[0], atol=1e-5)
    # equal content, equal bytes in any process: the header's metadata in sorted order, not safetensors' hash-map
    # order (which changes from process to process; the second-process byte-identity test runs it end to end)
    raw = (tmp_path / "table.safetensors").read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert list(header["__metadata__"]) == ["max_length", "prompts"]


def test_prompt_table_refuses_a_file_that_is_not_one(enc: TextEncoder, tmp_path: Path) -> None:
    bad = tmp_path / "model.safetensors"  # another safetensors file
    save_file({"w": torch.zeros(2)}, str(bad))
    with pytest.raises(GenlabError, match=r"model\.safetensors: not a prompt table"):
        TextEncoder(table=bad)
    enc.save(tmp_path / "t.safetensors", ["seven"])
    with pytest.raises(GenlabError, match=r"t\.safetensors: a table of \(1, 16, 384\) tokens .* max_length 16"):
        TextEncoder(max_length=8, table=tmp_path / "t.safetensors")


# ------------------------------------------------------------------------------------------ prompts


def test_prompt_sets(enc: TextEncoder) -> None:
    assert not set(TRAIN_TEMPLATES) & set(HELD_OUT_TEMPLATES)
    for label in range(10):
        train, held = all_train_prompts(label), heldout_prompts(label)
        assert len(set(train)) == len(TRAIN_TEMPLATES) and len(set(held)) == len(HELD_OUT_TEMPLATES)
        assert not set(train) & set(held)
        assert all(WORDS[label] in p or str(label) in p for p in train + held)
        assert max(enc.token_count(p) for p in train + held) <= enc.max_length  # none truncated
    with pytest.raises(ValueError, match="label"):
        train_prompt(10, torch.Generator().manual_seed(0))


def test_train_prompt_deterministic_given_generator() -> None:
    draw = [train_prompt(3, torch.Generator().manual_seed(s)) for s in range(20)]
    assert draw == [train_prompt(3, torch.Generator().manual_seed(s)) for s in range(20)]
    assert set(draw) <= set(all_train_prompts(3)) and len(set(draw)) > 1
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    labels = torch.tensor([0, 1, 2, 3, 9])
    batch = train_prompts(labels, g1)
    assert batch == train_prompts(labels, g2)
    assert all(p in all_train_prompts(int(y)) for p, y in zip(batch, labels, strict=True))


# ------------------------------------------------------------------------------------------- U-Net


def _text_unet(**kw: object) -> UNet:
    torch.manual_seed(0)
    args = {"in_channels": 4, "base_channels": 16, "channel_mults": (1, 2), "num_res_blocks": 1,
            "attention_levels": (), "num_classes": 0, "context_dim": CONTEXT_DIM, "cross_attention_levels": (1,)}
    return UNet(**{**args, **kw}).eval()


def _inputs(b: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(b, 16, dtype=torch.bool)
    mask[:, :5] = True
    return (torch.randn(b, 4, 8, 8, generator=g), torch.tensor([10, 500] * (b // 2)),
            torch.randn(b, 16, CONTEXT_DIM, generator=g), mask)


@torch.no_grad()
def test_text_unet_shape_and_context_sensitivity() -> None:
    unet = _text_unet()
    x, t, ctx, mask = _inputs()
    out = unet(x, t, context=ctx, context_mask=mask)
    assert out.shape == (2, 4, 8, 8)
    other = ctx.clone()
    other[:, 1] = torch.randn(2, CONTEXT_DIM)  # a real token changes
    assert not torch.allclose(out, unet(x, t, context=other, context_mask=mask), atol=1e-4)


@torch.no_grad()
def test_masked_context_tokens_do_not_matter() -> None:
    unet = _text_unet()
    x, t, ctx, mask = _inputs()
    out = unet(x, t, context=ctx, context_mask=mask)
    other = ctx.clone()
    other[~mask] = torch.randn(int((~mask).sum()), CONTEXT_DIM) * 10
    assert torch.allclose(out, unet(x, t, context=other, context_mask=mask), atol=1e-5)


@torch.no_grad()
def test_null_condition_is_learned_and_selected_per_sample() -> None:
    unet = _text_unet()
    x, t, ctx, mask = _inputs()
    uncond = unet(x, t)  # context=None: the whole batch is null
    assert not torch.allclose(uncond, unet(x, t, context=ctx, context_mask=mask), atol=1e-4)
    cond = unet(x, t, context=ctx, context_mask=mask)
    mixed = unet(x, t, context=ctx, context_mask=mask, drop=torch.tensor([True, False]))
    assert torch.allclose(mixed[0], uncond[0], atol=1e-5) and torch.allclose(mixed[1], cond[1], atol=1e-5)
    empty = mask.clone()
    empty[0] = False  # nothing to attend to: null, not NaN
    assert torch.allclose(unet(x, t, context=ctx, context_mask=empty)[0], uncond[0], atol=1e-5)
    unet.null_context.copy_(torch.randn_like(unet.null_context))  # the null output is the learned token's
    assert not torch.allclose(unet(x, t)[0], uncond[0], atol=1e-4)


@torch.no_grad()
def test_class_and_text_conditioning_together() -> None:
    unet = _text_unet(num_classes=10)
    x, t, ctx, mask = _inputs()
    a = unet(x, t, torch.tensor([1, 2]), context=ctx, context_mask=mask)
    assert not torch.allclose(a, unet(x, t, torch.tensor([3, 4]), context=ctx, context_mask=mask), atol=1e-4)
    assert torch.allclose(unet(x, t, context=ctx, context_mask=mask),  # y=None is the null label
                          unet(x, t, torch.tensor([10, 10]), context=ctx, context_mask=mask))


def test_unet_argument_errors() -> None:
    x, t, ctx, mask = _inputs()
    with pytest.raises(ValueError, match="num_classes=0"):
        _text_unet()(x, t, torch.tensor([0, 1]), context=ctx)
    with pytest.raises(ValueError, match="context_dim"):
        UNet(4, 16, (1, 2), 1, (), num_classes=10)(x, t, torch.tensor([0, 1]), context=ctx)
    with pytest.raises(ValueError, match="context_dim"):
        UNet(4, 16, (1, 2), 1, (), cross_attention_levels=(1,))
    with pytest.raises(ValueError, match="channel_mults"):
        UNet(4, 16, (1, 2), 1, (), context_dim=8, cross_attention_levels=(2,))


def test_class_unet_unchanged_without_context() -> None:
    unet = UNet(4, 48, (1, 2, 2), 1, (2,), num_classes=10)
    keys = list(unet.state_dict())
    assert sum(p.numel() for p in unet.parameters()) == CLASS_UNET_PARAMS
    assert len(keys) == CLASS_UNET_KEYS
    assert hashlib.sha1(",".join(keys).encode()).hexdigest() == CLASS_UNET_KEYS_SHA1
    text = UNet(4, 48, (1, 2, 2), 1, (2,), num_classes=10, context_dim=CONTEXT_DIM, cross_attention_levels=(1,))
    assert set(keys) < set(text.state_dict())  # text adds keys, renames none
    assert sum(p.numel() for p in UNet(4, 48, (1, 2, 2), 1, (2,), num_classes=0).parameters()) \
        == CLASS_UNET_PARAMS - 11 * 192  # num_classes=0: no label embedding (11 x 4*48)


def test_text_unet_learns_two_prompts(enc: TextEncoder) -> None:
    """60 Adam steps: from noise, predict +1 for "the digit one" and -1 for "the digit zero"."""
    torch.manual_seed(0)
    unet = UNet(4, 8, (1, 2), 1, (), num_classes=0, context_dim=CONTEXT_DIM, cross_attention_levels=(1,))
    ctx, mask = enc.encode(["the digit one", "the digit zero"])
    target = torch.stack([torch.full((4, 4, 4), 1.0), torch.full((4, 4, 4), -1.0)])
    opt = torch.optim.Adam(unet.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        idx = torch.randint(2, (4,), generator=g)
        x = torch.randn(4, 4, 4, 4, generator=g)
        loss = F.mse_loss(unet(x, torch.full((4,), 500), context=ctx[idx], context_mask=mask[idx]), target[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])
    with torch.no_grad():
        out = unet(torch.randn(2, 4, 4, 4, generator=g), torch.full((2,), 500), context=ctx, context_mask=mask)
    assert out[0].mean() > 0.3 and out[1].mean() < -0.3


@torch.no_grad()
def test_trim_drops_only_all_padding_columns_and_keeps_the_output() -> None:
    unet = _text_unet()
    x, t, ctx, mask = _inputs()
    mask[1, 5:7] = True  # the longest prompt has 7 tokens
    tokens, short = trim(ctx, mask)
    assert tokens.shape == (2, 7, CONTEXT_DIM) and short.shape == (2, 7)
    assert torch.equal(short, mask[:, :7]) and torch.equal(tokens, ctx[:, :7])
    assert torch.allclose(unet(x, t, context=tokens, context_mask=short), unet(x, t, context=ctx, context_mask=mask),
                          atol=1e-5)
    assert trim(ctx, torch.zeros_like(mask))[0].shape == (2, 1, CONTEXT_DIM)  # all null: one column remains


@torch.no_grad()
def test_pooled_prompt_vector_conditions_the_time_embedding() -> None:
    """With no cross-attention anywhere reachable, the pooled sentence vector alone must still condition."""
    unet = _text_unet()
    x, t, ctx, mask = _inputs()
    xattns = [unet.mid_xattn, *(xa for level in [*unet.down, *unet.up] if level.xattns for xa in level.xattns)]
    for xa in xattns:
        xa.forward = lambda h, *_: h  # cut every cross-attention path
    out = unet(x, t, context=ctx, context_mask=mask)
    other = ctx.clone()
    other[:, 2] += 1.0  # a real token changes, so the pooled vector changes
    assert not torch.allclose(out, unet(x, t, context=other, context_mask=mask), atol=1e-4)
    unet.pooled_emb.weight.zero_()
    unet.pooled_emb.bias.zero_()
    assert torch.allclose(unet(x, t, context=ctx, context_mask=mask), unet(x, t, context=other, context_mask=mask))


@torch.no_grad()
def test_guided_text_mixes_prompt_and_null_predictions() -> None:
    """eps_u + w (eps_c - eps_u) with eps_u from the learned null token; w = 0 and w = 1 are single passes."""
    unet = _text_unet()
    x, t, ctx, mask = _inputs()
    eps_c, eps_u = unet(x, t, context=ctx, context_mask=mask), unet(x, t)
    assert torch.allclose(guided_text(unet, ctx, mask, 2.5)(x, t), eps_u + 2.5 * (eps_c - eps_u), atol=1e-5)
    assert torch.allclose(guided_text(unet, ctx, mask, 0.0)(x, t), eps_u, atol=1e-6)
    assert torch.allclose(guided_text(unet, ctx, mask, 1.0)(x, t), eps_c, atol=1e-6)


def test_class_and_text_conditioner_gives_each_image_one_condition() -> None:
    """class+text training: each image gets its label (prompt null) or a prompt (label null), about half and
    half; a dropped image gets neither; without a generator (cheap sampling) the labels guide."""
    from genlab.config import LDMConfig
    from genlab.stages.diffusion_training import P_TEXT, Conditioner

    cfg = LDMConfig(conditioning="class+text")
    cond = Conditioner(cfg, 10, torch.device("cpu"))
    calls = []

    def unet(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, **kw: torch.Tensor) -> torch.Tensor:
        calls.append((y, kw))
        return x

    y = torch.arange(10).repeat(40)
    cond.model(unet, y, torch.Generator().manual_seed(0), 0.1)(torch.zeros(400), None, None)
    labels, kw = calls[-1]
    text, by_label = kw["drop"] == 0, labels != 10
    assert not (text & by_label).any()  # never both conditions
    assert torch.equal(labels[by_label], y[by_label])
    dropped = ~text & ~by_label
    assert 0.05 < dropped.float().mean() < 0.15  # p_uncond
    assert abs(text.float().mean() - (1 - 0.1) * P_TEXT) < 0.08
    # the prompt rows of text-conditioned images are phrasings of their own label
    rows = [i for i in range(400) if text[i]]
    for i in rows[:20]:
        row = kw["context"][i]
        j = next(r for r in range(len(cond.tokens)) if torch.equal(cond.tokens[r], row))
        assert j // len(cond.table[0]) == int(y[i])
    cond.model(unet, y[:4], None, 0.0)(torch.zeros(4), None, None)
    assert torch.equal(calls[-1][0], y[:4]) and calls[-1][1] == {}
