"""FiLo's released variant against an independent reference of the released forward.

The test writes a checkpoint in the released key layout ({"filo": state_dict}, names and shapes
as the released model definition has them, frozen CLIP copies included) on tiny random weights,
loads it through anomalens, and compares maps and scores with a reference written here from
the released code's description: explicit attention with the in-place aliasing of the stored
layer tensors, the full 77-token text pass, torchvision's Gaussian blur.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

from anomalens.methods.filo.checkpoint import (
    MissingCheckpointError,
    build_backbone,
    build_model,
    convert_released_state,
    load_checkpoint,
    load_into,
)
from anomalens.methods.filo.model import FiloConfig
from anomalens.methods.filo.prompts import build_prompts

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARCH, SIZE, N_CTX = "test-tiny-24", 28, 4
WIDTH, EMBED, TEXT_WIDTH = 32, 32, 32  # test-tiny-24: vision width, joint embedding, text width
CONVS = {"fc_11": (1, 1), "fc_33": (3, 3), "fc_55": (5, 5), "fc_77": (7, 7), "fc_15": (1, 5), "fc_51": (5, 1)}


def released_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the released model's parameter names and shapes."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    sd: dict[str, torch.Tensor] = {}
    hidden = EMBED // 16
    for group in ("normal", "abnormal"):
        sd[f"{group}_prompt_learner.ctx"] = r(N_CTX, TEXT_WIDTH, scale=0.02)
        sd[f"{group}_prompt_learner.meta_net.linear1.weight"] = r(hidden, EMBED)
        sd[f"{group}_prompt_learner.meta_net.linear1.bias"] = r(hidden)
        sd[f"{group}_prompt_learner.meta_net.linear2.weight"] = r(TEXT_WIDTH, hidden)
        sd[f"{group}_prompt_learner.meta_net.linear2.bias"] = r(TEXT_WIDTH)
    for name, (kh, kw) in CONVS.items():
        for i in range(3):
            sd[f"decoder_cov.{name}.{i}.weight"] = r(EMBED, WIDTH, kh, kw, scale=0.05)
            sd[f"decoder_cov.{name}.{i}.bias"] = r(EMBED)
    for i in range(4):
        sd[f"decoder_linear.fc.{i}.weight"] = r(EMBED, WIDTH)
        sd[f"decoder_linear.fc.{i}.bias"] = r(EMBED)
    sd["adapter.fc.0.weight"] = r(EMBED // 2, EMBED)
    sd["adapter.fc.2.weight"] = r(EMBED, EMBED // 2)
    # Frozen copies the released state dict also holds; they must be skipped, not loaded.
    sd["clip_model.visual.proj"] = r(WIDTH, EMBED)
    sd["text_encoder.text_projection"] = r(TEXT_WIDTH, EMBED)
    return sd


@pytest.fixture(scope="module")
def released_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("released") / "filo_train_on_visa.pth"
    sd = released_state()
    torch.save({"filo": sd}, path)
    info, state = load_checkpoint(path)
    config = FiloConfig.from_dict(info["model"])
    assert config.n_ctx == N_CTX  # read from the context tensor
    backbone = build_backbone(ARCH, None, SIZE, seed=3, variant=config.variant)
    model = build_model(backbone, config).eval()
    load_into(model, state, str(path))
    return model, sd, path


# ---- the independent reference ------------------------------------------------------------------


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    b, n, d = x.shape
    return x.view(b, n, n_heads, d // n_heads).transpose(1, 2)


def _attn(q, k, v, scale):
    return torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1) @ v


def reference_tokens(clip, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The released tower: the 7 stored tensors (with in-place writes) and the final tokens."""
    vis = clip.visual
    x = vis.conv1(images)
    side = x.shape[-1]
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([vis.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1), x], dim=1)
    pos = vis.positional_embedding
    old = math.isqrt(pos.shape[0] - 1)
    if old != side:  # the released copy of open_clip: plain bicubic, align_corners=False
        grid = pos[1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(side * side, -1)])
    x = vis.ln_pre(x + pos)
    stored: list[torch.Tensor] = []
    state: object = x
    for idx, blk in enumerate(vis.transformer.resblocks, start=1):
        heads = blk.attn.num_heads
        if idx < 7:  # single path
            h = blk.ln_1(state)
            qkv = F.linear(h, blk.attn.in_proj_weight, blk.attn.in_proj_bias)
            q, k, v = (_heads(t, heads) for t in qkv.chunk(3, dim=-1))
            scale = q.shape[-1] ** -0.5
            o = _attn(q, k, v, scale).transpose(1, 2).reshape(h.shape)
            state = state + blk.attn.out_proj(o)
            state = state + blk.mlp(blk.ln_2(state))
        else:
            if isinstance(state, list):
                xv, xo = state
            else:
                xv, xo = state, None
            src = xv if xo is None else xo
            h = blk.ln_1(src)
            qkv = F.linear(h, blk.attn.in_proj_weight, blk.attn.in_proj_bias)
            q, k, v = (_heads(t, heads) for t in qkv.chunk(3, dim=-1))
            scale = q.shape[-1] ** -0.5
            res_vv = blk.attn.out_proj(_attn(v, v, v, scale).transpose(1, 2).reshape(h.shape))
            res_ori = blk.attn.out_proj(_attn(q, k, v, scale).transpose(1, 2).reshape(h.shape))
            if xo is None:
                xo = xv + res_ori
            else:
                xo += res_ori  # in place: lands in the tensor stored for the previous layer
            xo = xo + blk.mlp(blk.ln_2(xo))
            xv += res_vv  # in place: the V-V sum lives in the tensor stored for layer 6
            state = [xv, xo]
        if idx in (6, 12, 18, 24):
            stored.extend([state] if not isinstance(state, list) else state)
    return stored, state[1]


def reference_text(clip, tokenizer, sentences, ctx, bias) -> torch.Tensor:
    """Unit-mean-unit text feature of learned context + sentences, full 77-token pass."""
    tokens = tokenizer([" ".join(["X"] * N_CTX) + " " + s for s in sentences])
    emb = clip.token_embedding(tokens)
    emb = torch.cat([emb[:, :1], (ctx + bias).expand(len(sentences), -1, -1), emb[:, 1 + N_CTX :]], dim=1)
    x = clip.transformer(emb + clip.positional_embedding, attn_mask=clip.attn_mask)
    x = clip.ln_final(x)[torch.arange(len(sentences)), tokens.argmax(dim=-1)] @ clip.text_projection
    x = x / x.norm(dim=-1, keepdim=True)
    x = x.mean(dim=0)
    return x / x.norm()


def reference_forward(clip, tokenizer, sd, images, normal_sentences, abnormal_sentences):
    stored, final = reference_tokens(clip, images)
    vis = clip.visual
    emb = vis.ln_post(final[:, 0]) @ vis.proj
    adapted = emb + F.silu(F.relu(emb @ sd["adapter.fc.0.weight"].T) @ sd["adapter.fc.2.weight"].T)
    a = adapted / adapted.norm(dim=-1, keepdim=True)
    maps, scores = [], []
    for b in range(images.shape[0]):

        def meta(group, image=a[b]):
            p = f"{group}_prompt_learner.meta_net."
            hid = F.relu(image @ sd[p + "linear1.weight"].T + sd[p + "linear1.bias"])
            return hid @ sd[p + "linear2.weight"].T + sd[p + "linear2.bias"]

        fn = reference_text(clip, tokenizer, normal_sentences, sd["normal_prompt_learner.ctx"], meta("normal"))
        fa = reference_text(clip, tokenizer, abnormal_sentences, sd["abnormal_prompt_learner.ctx"], meta("abnormal"))
        text = torch.stack([fn, fa])
        text = text / text.norm()
        side = math.isqrt(stored[0].shape[1] - 1)
        head_out = []
        for i, t in enumerate(stored[0::2]):  # T6 (aliased), ori12, ori18, ori24
            w, bias = sd[f"decoder_linear.fc.{i}.weight"], sd[f"decoder_linear.fc.{i}.bias"]
            head_out.append(t[b : b + 1, 1:] @ w.T + bias)
        for i, t in enumerate(stored[1::2]):  # vv12, vv18, vv24 (all the same tensor)
            grid = t[b : b + 1, 1:].view(1, side, side, -1).permute(0, 3, 1, 2)
            total = sum(
                F.conv2d(grid, sd[f"decoder_cov.{n}.{i}.weight"], sd[f"decoder_cov.{n}.{i}.bias"], padding="same")
                for n in CONVS
            )
            head_out.append(total.permute(0, 2, 3, 1).reshape(1, side * side, -1))
        per_map = []
        for h in head_out:
            h = h / h.norm(dim=-1, keepdim=True)
            logit = (100.0 * h @ text.T).permute(0, 2, 1).reshape(1, 2, side, side)
            prob = torch.softmax(F.interpolate(logit, size=images.shape[-2:], mode="bilinear", align_corners=True), 1)
            per_map.append(gaussian_blur((prob[:, 1:2] - prob[:, 0:1] + 1) / 2, [3, 3], [4.0, 4.0]))
        amap = torch.stack(per_map).mean(0)[0, 0]
        maps.append(amap)
        scores.append((float(a[b] @ text[1]) + float(amap.max())) / 2)
    return torch.stack(maps), torch.tensor(scores)


# ---- tests -------------------------------------------------------------------------------------------


def test_released_forward_matches_the_reference(released_model):
    model, sd, _ = released_model
    torch.manual_seed(5)
    images = torch.randn(2, 3, SIZE, SIZE)
    descriptions = ["bent component", "burnt area"]
    prompts = [build_prompts("pcb1", descriptions, pos, style="released") for pos in ("center", "top left")]
    with torch.no_grad():
        out = model(images, prompts)
        clip, tok = model.backbone.model, model.backbone.tokenizer
        ref_maps, ref_scores = [], []
        for b in range(2):
            m, s = reference_forward(clip, tok, sd, images[b : b + 1], prompts[b].normal, prompts[b].abnormal)
            ref_maps.append(m[0])
            ref_scores.append(s[0])
    assert out.anomaly_map.shape == (2, SIZE, SIZE)
    assert (out.anomaly_map - torch.stack(ref_maps)).abs().max() <= 1e-4
    assert (out.score - torch.stack(ref_scores)).abs().max() <= 1e-4
    # The maps carry information (not constant) and the two images differ.
    assert out.anomaly_map.std() > 1e-4
    assert (out.anomaly_map[0] - out.anomaly_map[1]).abs().max() > 1e-4


def test_released_forward_at_another_input_size(released_model):
    """35 px is a 5x5 grid on the 4x4-grid tiny model: positional embeddings are resampled."""
    _, sd, path = released_model
    info, state = load_checkpoint(path)
    model = build_model(build_backbone(ARCH, None, 35, seed=3, variant="released"), FiloConfig.from_dict(info["model"]))
    load_into(model.eval(), state)
    torch.manual_seed(6)
    images = torch.randn(1, 3, 35, 35)
    prompts = build_prompts("pcb1", ["bent component"], "center", style="released")
    with torch.no_grad():
        out = model(images, [prompts])
        ref_map, ref_score = reference_forward(
            model.backbone.model, model.backbone.tokenizer, sd, images, prompts.normal, prompts.abnormal
        )
    assert (out.anomaly_map - ref_map).abs().max() <= 1e-4
    assert (out.score - ref_score).abs().max() <= 1e-4


def test_released_aliasing_makes_mmci_inputs_identical(released_model):
    from anomalens.methods.filo.released import released_features

    model, _, _ = released_model
    feats = released_features(model.backbone, torch.randn(1, 3, SIZE, SIZE))
    assert all(t is feats.mmci_inputs[0] for t in feats.mmci_inputs)
    assert feats.linear_inputs[0] is feats.mmci_inputs[0]  # layer 6 is the V-V sum
    normal = model.backbone(torch.randn(1, 3, SIZE, SIZE), layers=(12,))
    assert normal.layers[12].shape == feats.linear_inputs[1].shape


def test_released_checkpoint_names_every_bad_key(tmp_path):
    sd = released_state()
    sd["decoder_linear.fc.9.weight"] = torch.zeros(1)
    sd["something_else"] = torch.zeros(1)
    with pytest.raises(MissingCheckpointError, match=r"decoder_linear\.fc\.9\.weight, something_else"):
        convert_released_state(sd, "x.pth")
    sd = released_state()
    del sd["adapter.fc.2.weight"], sd["decoder_cov.fc_15.1.bias"]
    path = tmp_path / "partial.pth"
    torch.save({"filo": sd}, path)
    _, state = load_checkpoint(path)
    config = FiloConfig.from_dict({**FiloConfig.released().to_dict(), "n_ctx": N_CTX})
    model = build_model(build_backbone(ARCH, None, SIZE, variant="released"), config)
    with pytest.raises(MissingCheckpointError, match=r"partial.pth.*missing adapter.fc2.weight, mmci.18.convs.4.bias"):
        load_into(model, state, str(path))


def test_released_checkpoint_is_read_without_unpickling_code(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"filo": released_state(), "extra": np.float64}, path)  # a class object: needs full pickle
    with pytest.raises(MissingCheckpointError, match="weights-only"):
        load_checkpoint(path)
    bad = tmp_path / "not_filo.pth"
    torch.save({"model": released_state()}, bad)
    with pytest.raises(MissingCheckpointError, match="'filo' state dict"):
        load_checkpoint(bad)


def test_detector_runs_the_released_checkpoint(released_model):
    from anomalens.detector import Detector
    from anomalens.images import LoadedImage

    _, _, path = released_model
    det = Detector(
        method="filo", checkpoint=str(path), backbone=ARCH, image_size=SIZE, category="pcb1"
    )
    method = det.method
    assert method.released and method.model.config.variant == "released"
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    method.fit([])  # zero-shot
    out = method.predict([LoadedImage(rgb=rgb, path="a.png")])[0]
    assert out.extra == {"grounding": "off"}
    assert 0.0 <= out.anomaly_map.min() and out.anomaly_map.max() <= 1.0
    # The score is the released one: (cos/sqrt2 + max map) / 2 without boxes.
    assert abs(out.score) <= 1.0


def test_cli_detect_with_the_released_checkpoint(released_model, tmp_path):
    import json

    from PIL import Image
    from typer.testing import CliRunner

    from anomalens.cli import app

    _, _, path = released_model
    queries = tmp_path / "queries"
    queries.mkdir()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (30, 34, 3), dtype=np.uint8)).save(queries / "a.png")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "detect", str(queries), "--method", "filo", "--checkpoint", str(path), "--backbone", ARCH,
        "--image-size", str(SIZE), "--category", "pcb1", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert record["status"] == "ok" and record["grounding"] == "off"
    assert any(d["text"].startswith("abnormal pcb with ") for d in record["descriptions"])
