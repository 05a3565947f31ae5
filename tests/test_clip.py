"""ClipBackbone: positional-embedding interpolation, dense features, V-V/GEM paths, weight loading."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.model import resize_pos_embed

import anomalens.backbones.clip_loading as clip_module
from anomalens.backbones.clip import (
    ClipBackbone,
    MissingWeightsError,
    create_clip,
    interpolate_pos_embed,
)


def images(size: int | tuple[int, int], batch: int = 2, seed: int = 1) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else size
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, h, w, generator=g)


# ---- positional embedding interpolation ------------------------------------------------------


def test_interpolate_same_grid_returns_the_same_tensor():
    pos = torch.randn(1 + 16, 8)
    assert interpolate_pos_embed(pos, (4, 4)) is pos


def test_interpolate_keeps_class_token_and_resamples_grid():
    torch.manual_seed(0)
    pos = torch.randn(1 + 16, 8)
    out = interpolate_pos_embed(pos, (8, 8))
    assert out.shape == (1 + 64, 8)
    assert torch.equal(out[0], pos[0])
    # A constant grid stays constant (bicubic weights sum to 1).
    const = torch.cat([pos[:1], torch.full((16, 8), 0.25)])
    torch.testing.assert_close(interpolate_pos_embed(const, (7, 9))[1:], torch.full((63, 8), 0.25))


def test_interpolate_matches_open_clip_resize_pos_embed():
    # open_clip's own loader resizes checkpoints' grids (bicubic, antialias): same numbers.
    torch.manual_seed(0)
    pos = torch.randn(1 + 49, 12)
    state = {"visual.positional_embedding": pos.clone()}
    resize_pos_embed(state, SimpleNamespace(visual=SimpleNamespace(grid_size=(10, 10))))
    torch.testing.assert_close(interpolate_pos_embed(pos, (10, 10)), state["visual.positional_embedding"])


def test_interpolate_non_square_grid():
    torch.manual_seed(0)
    pos = torch.randn(1 + 16, 8)
    out = interpolate_pos_embed(pos, (3, 6))
    assert out.shape == (1 + 18, 8)
    assert torch.equal(out[0], pos[0])
    with pytest.raises(ValueError, match="square"):
        interpolate_pos_embed(torch.randn(1 + 12, 8), (4, 4))


def test_native_size_equals_open_clip_encode_image(tiny_clip):
    x = images(32)
    with torch.no_grad():
        ref = tiny_clip.model.encode_image(x)
        ref_tokens = tiny_clip.model.visual._embeds(x)
    feats = tiny_clip(x)
    assert feats.grid == (4, 4)
    assert (feats.image_embedding - ref).abs().max() < 1e-5
    emb, grid = tiny_clip.embed(x)
    assert grid == (4, 4)
    assert (emb - ref_tokens).abs().max() < 1e-6
    torch.testing.assert_close(tiny_clip.encode_image(x), F.normalize(ref, dim=-1), atol=1e-5, rtol=0)


def test_bigger_input_interpolates_and_keeps_class_token(tiny_clip):
    x32, x64 = images(32), images(64)
    emb32, _ = tiny_clip.embed(x32)
    emb64, grid64 = tiny_clip.embed(x64)
    assert grid64 == (8, 8) and emb64.shape == (2, 1 + 64, tiny_clip.width)
    # The class token gets class_embedding + its own (not resampled) positional embedding.
    torch.testing.assert_close(emb64[:, 0], emb32[:, 0])
    visual = tiny_clip.model.visual
    patch_pos = interpolate_pos_embed(visual.positional_embedding, (8, 8))[1:]
    manual = visual.conv1(x64).flatten(2).transpose(1, 2) + patch_pos
    torch.testing.assert_close(emb64[:, 1:], visual.ln_pre(manual))
    feats = tiny_clip(x64, layers=(4,))
    assert feats.image_embedding.shape == (2, tiny_clip.embed_dim)
    assert feats.layers[4].shape == (2, 65, tiny_clip.width)
    assert torch.isfinite(feats.image_embedding).all()


def test_non_square_input(tiny_clip):
    feats = tiny_clip(images((32, 48)), layers=(2,))
    assert feats.grid == (4, 6)
    assert feats.layers[2].shape == (2, 1 + 24, tiny_clip.width)


# ---- dense features --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 64])
def test_layer_outputs_match_running_open_clip_blocks(tiny_clip, size):
    x = images(size)
    feats = tiny_clip(x, layers=(1, 3, 4))
    assert set(feats.layers) == {1, 3, 4} and feats.vv == {} and feats.gem is None
    n = (size // 8) ** 2
    tokens, _ = tiny_clip.embed(x)
    with torch.no_grad():
        for index, block in enumerate(tiny_clip.model.visual.transformer.resblocks, start=1):
            tokens = block(tokens)
            if index in feats.layers:
                assert feats.layers[index].shape == (2, 1 + n, tiny_clip.width)
                assert (feats.layers[index] - tokens).abs().max() < 1e-5
    projected = tiny_clip.project(feats.layers[3])
    assert projected.shape == (2, 1 + n, tiny_clip.embed_dim)
    visual = tiny_clip.model.visual
    torch.testing.assert_close(projected, visual.ln_post(feats.layers[3]) @ visual.proj)
    torch.testing.assert_close(feats.image_embedding, tiny_clip.project(feats.layers[4][:, 0]))


def test_extra_paths_leave_normal_path_unchanged(tiny_clip):
    x = images(32)
    plain = tiny_clip(x, layers=(2, 4))
    both = tiny_clip(x, layers=(2, 4), vv_from=2, gem_from=3)
    torch.testing.assert_close(both.layers[2], plain.layers[2], atol=1e-6, rtol=0)
    torch.testing.assert_close(both.layers[4], plain.layers[4], atol=1e-6, rtol=0)
    torch.testing.assert_close(both.image_embedding, plain.image_embedding, atol=1e-6, rtol=0)
    assert set(both.vv) == {2, 4}
    assert both.gem.shape == (2, 17, tiny_clip.width)
    # V-V starting at block 3 has not started at block 2.
    assert set(tiny_clip(x, layers=(2, 4), vv_from=3).vv) == {4}


def reference_vv(model, x: torch.Tensor, vv_from: int) -> dict[int, torch.Tensor]:
    """Straightforward V-V dual path: per block, x_vv += out_proj(softmax(v v^T / sqrt(d)) v) on ln_1(x)."""
    visual = model.visual
    tokens = visual._embeds(x)
    out, x_vv = {}, None
    for index, block in enumerate(visual.transformer.resblocks, start=1):
        if index >= vv_from:
            if x_vv is None:
                x_vv = tokens.clone()
            attn = block.attn
            h = block.ln_1(tokens)
            width, nh = h.shape[-1], attn.num_heads
            hd = width // nh
            v_all = h @ attn.in_proj_weight[2 * width :].T + attn.in_proj_bias[2 * width :]
            per_head = []
            for head in range(nh):
                v = v_all[..., head * hd : (head + 1) * hd]
                weights = torch.softmax(v @ v.transpose(1, 2) / math.sqrt(hd), dim=-1)
                per_head.append(weights @ v)
            x_vv = x_vv + torch.cat(per_head, dim=-1) @ attn.out_proj.weight.T + attn.out_proj.bias
            out[index] = x_vv
        tokens = block(tokens)
    return out


def test_vv_path_matches_straightforward_implementation(tiny_clip):
    x = images(32)
    feats = tiny_clip(x, layers=(2, 3, 4), vv_from=2)
    with torch.no_grad():
        ref = reference_vv(tiny_clip.model, x, vv_from=2)
    for index in (2, 3, 4):
        assert (feats.vv[index] - ref[index]).abs().max() < 1e-5


# ---- GEM parity with the independent gem-torch package ---------------------------------------


@pytest.fixture(scope="module")
def vit_b16_pair():
    """Random ViT-B-16 weights: our backbone and gem-torch's wrapper on an identical copy."""
    gem = pytest.importorskip("gem")
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    reference = copy.deepcopy(model)
    wrapper = gem.GEMWrapper(reference, tokenizer=None, depth=7)
    # Adaptation of the *reference* to open_clip 3.x: gem-torch's modified_vit_forward permutes
    # the tokens to sequence-first (LND) before `transformer(x)`, as old open_clip did, but open_clip
    # 3.x blocks are batch-first. Its GEM blocks (the last 6) transpose LND themselves, and
    # Transformer.forward is a plain loop over the blocks when batch_first is True, so the only
    # change needed is to make the 6 untouched blocks' nn.MultiheadAttention read LND as well.
    blocks = reference.visual.transformer.resblocks
    for block in blocks[: len(blocks) - 6]:
        block.attn.batch_first = False
    return ClipBackbone(model, "ViT-B-16", None), wrapper, model


def test_gem_reference_adaptation_reproduces_open_clip(vit_b16_pair):
    _, wrapper, model = vit_b16_pair
    x = images(224, batch=1)
    with torch.no_grad():
        _, ori = wrapper.model.visual(x)
        ref = model.encode_image(x)
    assert (ori[:, 0] - ref).abs().max() < 1e-4


@pytest.mark.parametrize("size", [224, 448])
def test_gem_path_matches_gem_torch(vit_b16_pair, size):
    ours, wrapper, _ = vit_b16_pair
    x = images(size, batch=1)
    with torch.no_grad():
        gem_tokens, ori_tokens = wrapper.model.visual(x)
    assert ours.num_layers - 5 == 7
    feats = ours(x, layers=(12,), gem_from=ours.num_layers - 5)
    n = 1 + (size // 16) ** 2
    assert feats.gem.shape == (1, n, ours.width)
    assert (ours.project(feats.gem) - gem_tokens).abs().max() <= 1e-4
    assert (ours.project(feats.layers[12]) - ori_tokens).abs().max() <= 1e-4


# ---- weight loading --------------------------------------------------------------------------


def assert_same_model(a, b):
    x = images(32)
    torch.testing.assert_close(a(x).image_embedding, b(x).image_embedding, atol=0, rtol=0)
    torch.testing.assert_close(a.encode_text(["a photo", "a scratch"]), b.encode_text(["a photo", "a scratch"]))


def test_load_safetensors(tiny_clip, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_clip.model.state_dict().items()}, str(path))
    loaded = create_clip("test-tiny", pretrained=path)
    assert loaded.pretrained == str(path)
    assert_same_model(tiny_clip, loaded)
    # A folder holding the file works too.
    assert_same_model(tiny_clip, create_clip("test-tiny", pretrained=str(tmp_path)))


@pytest.mark.parametrize("layout", ["plain", "wrapped", "module"])
def test_load_torch_checkpoint(tiny_clip, tmp_path, layout):
    state = tiny_clip.model.state_dict()
    if layout == "module":
        state = {f"module.{k}": v for k, v in state.items()}
    obj = {"state_dict": state, "epoch": 3} if layout == "wrapped" else state
    path = tmp_path / "tiny.pt"
    torch.save(obj, path)
    assert_same_model(tiny_clip, create_clip("test-tiny", pretrained=str(path)))


def test_missing_file_names_path_and_flag(tmp_path):
    path = tmp_path / "nowhere" / "clip.safetensors"
    with pytest.raises(MissingWeightsError) as info:
        create_clip("test-tiny", pretrained=str(path))
    assert str(path) in str(info.value) and "--weights" in str(info.value)


def test_wrong_architecture_file(tmp_path):
    torch.manual_seed(0)
    other = open_clip.create_model("test-tiny-24", pretrained=None)
    path = tmp_path / "tiny24.pt"
    torch.save(other.state_dict(), path)
    with pytest.raises(MissingWeightsError, match="does not match the test-tiny architecture"):
        create_clip("test-tiny", pretrained=str(path))


def test_garbage_file_is_a_clear_error(tmp_path):
    for name in ("junk.pt", "junk.safetensors"):
        path = tmp_path / name
        path.write_bytes(b"this is not a checkpoint" * 10)
        with pytest.raises(MissingWeightsError, match="not a readable CLIP checkpoint"):
            create_clip("test-tiny", pretrained=str(path))


def test_unknown_tag_lists_known_tags(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("must fail before building or downloading anything")

    monkeypatch.setattr(open_clip, "create_model", no_network)
    with pytest.raises(MissingWeightsError) as info:
        create_clip("ViT-B-16", pretrained="laion9000_nope")
    msg = str(info.value)
    assert "laion9000_nope" in msg and "laion400m_e32" in msg and "openai" in msg and "--weights" in msg
    with pytest.raises(ValueError, match="Unknown CLIP architecture"):
        create_clip("ViT-Nope", pretrained=None)


def test_default_weights_unavailable_names_what_to_fetch(monkeypatch):
    calls = []

    def offline(name, pretrained=None, **kwargs):
        calls.append((name, pretrained, kwargs))
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(open_clip, "create_model", offline)
    monkeypatch.setattr(clip_module, "_hub_reachable", lambda *a, **k: True)
    monkeypatch.setattr(clip_module, "_cached_weights", lambda *a, **k: None)
    with pytest.raises(MissingWeightsError) as info:
        create_clip("ViT-B-16-plus-240")
    msg = str(info.value)
    assert calls[0][:2] == ("ViT-B-16-plus-240", "laion400m_e31")
    assert "timm/vit_base_patch16_plus_clip_240.laion400m_e31" in msg
    assert "vit_b_16_plus_240-laion400m_e31" in msg  # the release URL
    assert "--weights" in msg and "OSError" in msg


def test_unreachable_hub_fails_fast_without_download(monkeypatch):
    # HF_HUB_OFFLINE=1 (set by conftest) counts as unreachable: no download is attempted.
    monkeypatch.setattr(clip_module, "_cached_weights", lambda *a, **k: None)
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: pytest.fail("must not try to download"))
    with pytest.raises(MissingWeightsError) as info:
        create_clip("ViT-B-16-plus-240")
    msg = str(info.value)
    assert "cannot be reached" in msg and "--weights" in msg
    assert "timm/vit_base_patch16_plus_clip_240.laion400m_e31" in msg


def test_openai_tag_builds_quick_gelu(monkeypatch):
    # OpenAI's weights were trained with QuickGELU; open_clip only warns if the model uses GELU.
    calls = []

    def offline(name, pretrained=None, **kwargs):
        calls.append(kwargs)
        raise OSError("offline")

    monkeypatch.setattr(open_clip, "create_model", offline)
    monkeypatch.setattr(clip_module, "_hub_reachable", lambda *a, **k: True)
    monkeypatch.setattr(clip_module, "_cached_weights", lambda *a, **k: None)
    with pytest.raises(MissingWeightsError):
        create_clip("ViT-L-14-336", pretrained="openai")
    with pytest.raises(MissingWeightsError):
        create_clip("ViT-B-16", pretrained="laion400m_e32")
    assert calls[0]["force_quick_gelu"] is True
    assert calls[1]["force_quick_gelu"] is False


def test_no_default_for_tiny():
    with pytest.raises(MissingWeightsError, match="No default weights"):
        create_clip("test-tiny")


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_local_torchscript_file_means_quick_gelu(tmp_path):
    # OpenAI's own release is TorchScript and was trained with QuickGELU; plain state dicts follow
    # the architecture's default tag (ViT-B-16: laion400m_e32, GELU; ViT-L-14-336: openai, QuickGELU).
    from torch import nn

    from anomalens.backbones.clip_loading import _uses_quick_gelu

    scripted, plain = tmp_path / "openai.pt", tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(scripted))
    torch.save(nn.Linear(2, 2).state_dict(), plain)
    assert _uses_quick_gelu(scripted, "ViT-B-16") is True
    assert _uses_quick_gelu(plain, "ViT-B-16") is False
    assert _uses_quick_gelu(plain, "ViT-L-14-336") is True
