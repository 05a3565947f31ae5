"""FiLo's equations on small tensors, its text encoder on embeddings, the network and the method."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter as scipy_gaussian

from anomalens.images import LoadedImage
from anomalens.methods.filo.adapter import Adapter, global_logits, global_score
from anomalens.methods.filo.checkpoint import MissingCheckpointError, build_backbone, build_model
from anomalens.methods.filo.losses import dice_loss, focal_loss, global_loss, local_loss
from anomalens.methods.filo.mmci import (
    MMCI,
    MMCI_KERNELS,
    class_map,
    combine_layers,
    final_map,
    gaussian_filter,
    grid_of,
    layer_map,
)
from anomalens.methods.filo.model import FiloConfig, top_descriptions
from anomalens.methods.filo.prompt_learner import PromptLearner, encode_text_embeddings, group_features
from anomalens.methods.filo.prompts import build_prompts
from anomalens.text.prompts import POSITIONS

pytestmark = pytest.mark.usefixtures("one_torch_thread")



@pytest.fixture(scope="module")
def tiny24():
    return build_backbone("test-tiny-24", None, 28, seed=0)


# ---- Eq. 1 and the adapter ------------------------------------------------------------------


def test_global_score_eq1_by_hand():
    logits = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    amap = torch.zeros(2, 3, 3)
    amap[0, 1, 2] = 0.5
    amap[1, 0, 0] = 0.25
    s = global_score(logits, amap)
    expected = [1 / (1 + math.exp(-1.0)) + 0.5, 1 / (1 + math.exp(2.0)) + 0.25]
    assert torch.allclose(s, torch.tensor(expected), atol=1e-6)


def test_global_logits_are_cosines_over_temperature():
    a = torch.tensor([[3.0, 4.0]])
    text = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    logits = global_logits(a, text, temperature=0.5)
    assert torch.allclose(logits, torch.tensor([[0.6 / 0.5, 0.8 / 0.5]]))


def test_adapter_paper_and_released_styles():
    torch.manual_seed(0)
    paper = Adapter(8, "paper")
    assert paper.fc1.weight.shape == (4, 8) and paper.fc2.weight.shape == (8, 4)
    assert paper.fc1.bias is not None
    x = torch.randn(3, 8)
    by_hand = F.silu(paper.fc2(F.relu(paper.fc1(x))))
    assert torch.allclose(paper(x), by_hand)
    released = Adapter(8, "released")
    assert released.fc1.bias is None and released.fc2.bias is None
    torch.nn.init.zeros_(released.fc2.weight)  # SiLU(0) = 0: the residual alone remains
    assert torch.allclose(released(x), x)
    with pytest.raises(ValueError):
        Adapter(8, "other")


# ---- MMCI and Eqs. 2-4 ----------------------------------------------------------------------


def test_mmci_kernels_shapes_and_same_padding():
    mmci = MMCI(width=6, embed_dim=4)
    assert mmci.kernels == MMCI_KERNELS == ((1, 1), (3, 3), (5, 5), (7, 7), (1, 5), (5, 1))
    for conv, (kh, kw) in zip(mmci.convs, MMCI_KERNELS):
        assert conv.weight.shape == (4, 6, kh, kw)
    outs = mmci(torch.randn(2, 6, 4, 5))
    assert len(outs) == 6 and all(o.shape == (2, 4, 4, 5) for o in outs)


def test_mmci_same_padding_is_zero_padding_centred():
    conv = MMCI(1, 1).convs[4]  # the 1x5 bar
    torch.nn.init.ones_(conv.weight)
    torch.nn.init.zeros_(conv.bias)
    x = torch.arange(6.0).view(1, 1, 1, 6)
    # each output sums its row neighbours at offsets -2..2, zeros outside
    assert conv(x).flatten().tolist() == [3.0, 6.0, 10.0, 15.0, 14.0, 12.0]


def test_class_map_softmax_over_normal_abnormal():
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)  # pixel 0 = e0, pixel 1 = e1
    text = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    m = class_map(feats, text, temperature=0.5)
    p = 1 / (1 + math.exp(-2.0))  # softmax([2, 0])
    assert torch.allclose(m[0, :, 0, 0], torch.tensor([p, 1 - p]), atol=1e-6)
    assert torch.allclose(m[0, :, 0, 1], torch.tensor([1 - p, p]), atol=1e-6)


def test_eq2_and_eq3_normalise_to_two_class_maps():
    torch.manual_seed(0)
    maps = [torch.rand(1, 2, 3, 3).softmax(dim=1) for _ in range(6)]
    m = layer_map(maps, (6, 6))
    assert m.shape == (1, 2, 6, 6)
    by_hand = F.interpolate(sum(maps) / 6, size=(6, 6), mode="bilinear", align_corners=False)
    assert torch.allclose(m, by_hand, atol=1e-6)
    assert torch.allclose(m.sum(dim=1), torch.ones(1, 6, 6), atol=1e-6)
    layers = [layer_map(maps[:3], (6, 6)), layer_map(maps[3:], (6, 6))]
    combined = combine_layers(layers)
    assert torch.allclose(combined, (layers[0] + layers[1]) / 2)
    assert torch.allclose(combined.sum(dim=1), torch.ones(1, 6, 6), atol=1e-6)


@pytest.mark.parametrize("shape,sigma", [((20, 24), 4.0), ((9, 12), 4.0), ((30, 30), 1.5)])
def test_gaussian_filter_matches_scipy(shape, sigma):
    rng = np.random.default_rng(0)
    x = rng.random(shape)
    ours = gaussian_filter(torch.from_numpy(x)[None], sigma)[0].numpy()
    assert np.allclose(ours, scipy_gaussian(x, sigma), atol=1e-10)  # also when the border pad exceeds the map


def test_eq4_final_map():
    torch.manual_seed(0)
    two = torch.rand(2, 2, 16, 16)
    ours = final_map(two, sigma=4.0)
    for b in range(2):
        x = (two[b, 1] + 1 - two[b, 0]).double().numpy()
        assert np.allclose(ours[b].numpy(), scipy_gaussian(x, 4.0) / 2, atol=1e-5)
    p = torch.rand(1, 1, 8, 8)
    assert final_map(torch.cat([1 - p, p], 1), 0).allclose(p[:, 0])  # M_n = 1 - M_a: Eq. 4 gives M_a


def test_grid_of_reshapes_patch_tokens():
    tokens = torch.arange(1 + 6).float().view(1, 7, 1)
    grid = grid_of(tokens, (2, 3))
    assert grid.shape == (1, 1, 2, 3) and grid.flatten().tolist() == [1, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError):
        grid_of(tokens, (2, 2))


# ---- losses ---------------------------------------------------------------------------------


def test_focal_loss_by_hand():
    prob = torch.tensor([0.9, 0.2, 0.6, 0.3])
    target = torch.tensor([1.0, 0.0, 0.0, 1.0])
    p_t = [0.9, 0.8, 0.4, 0.3]
    expected = sum(-((1 - p) ** 2) * math.log(p) for p in p_t) / 4
    assert focal_loss(prob, target, smooth=0.0).item() == pytest.approx(expected, rel=1e-6)
    # the released smoothing: one-hot targets clamped to [s, 1 - s], then s added to p_t
    s = 1e-5
    smoothed = [(1 - s) * p + s * (1 - p) + s for p in p_t]
    expected = sum(-((1 - p) ** 2) * math.log(p) for p in smoothed) / 4
    assert focal_loss(prob, target).item() == pytest.approx(expected, rel=1e-6)
    # a confident wrong pixel stays finite: log(2s), not log(0)
    assert focal_loss(torch.tensor([0.0]), torch.tensor([1.0])).item() == pytest.approx(-math.log(2 * s), rel=1e-4)


def test_dice_loss_by_hand():
    pred = torch.tensor([[0.5, 1.0, 0.0, 0.25]])
    target = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    # 1 - (2 * 1.5 + 1) / (1.75 + 2 + 1)
    assert dice_loss(pred, target).item() == pytest.approx(1 - 4 / 4.75, rel=1e-6)
    assert dice_loss(torch.zeros(1, 4), torch.zeros(1, 4)).item() == pytest.approx(0.0)


def test_dice_loss_per_row_by_hand():
    pred = torch.tensor([[[0.5, 1.0], [0.0, 0.25]]])  # one image, two rows
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    row1 = 1 - (2 * 1.5 + 1) / (1.5 + 2 + 1)
    row2 = 1 - (0 + 1) / (0.25 + 0 + 1)
    assert dice_loss(pred, target, unit="row").item() == pytest.approx((row1 + row2) / 2, rel=1e-6)
    assert dice_loss(pred, target).item() == pytest.approx(1 - (2 * 1.5 + 1) / (1.75 + 2 + 1), rel=1e-6)
    with pytest.raises(ValueError, match="unknown Dice unit 'column'"):
        dice_loss(pred, target, unit="column")


def test_local_and_global_loss_compose():
    torch.manual_seed(0)
    m_a = torch.rand(2, 4, 4)
    two = torch.stack([1 - m_a, m_a], 1)
    g = (torch.rand(2, 4, 4) > 0.5).float()
    expected = focal_loss(m_a, g) + dice_loss(m_a, g) + dice_loss(1 - m_a, 1 - g)
    assert torch.allclose(local_loss(two, g), expected)
    rows = focal_loss(m_a, g) + dice_loss(m_a, g, unit="row") + dice_loss(1 - m_a, 1 - g, unit="row")
    assert torch.allclose(local_loss(two, g, dice_unit="row"), rows)
    assert not torch.allclose(rows, expected)
    logits = torch.tensor([[0.0, 1.0]])
    assert global_loss(logits, torch.tensor([1])).item() == pytest.approx(math.log(1 + math.exp(-1)))


# ---- prompts and the text encoder -----------------------------------------------------------


def test_build_prompts_templates_and_positions():
    p = build_prompts("metal_nut", ["bent lobe", "scratch"], "top left", ("flawless", "without defect"), ("damaged",))
    assert p.normal == ("flawless metal nut.", "metal nut without defect.")
    assert p.abnormal == (
        "damaged metal nut with bent lobe at top left.",
        "damaged metal nut with scratch at top left.",
    )
    assert p.descriptions == ("bent lobe", "scratch")
    all_pos = build_prompts("pcb1", ["scratch"], POSITIONS, ("good",), ("damaged",))
    assert len(all_pos.abnormal) == 9 and all_pos.abnormal[4] == "damaged pcb with scratch at center."


def test_text_encoder_on_embeddings_matches_encode_text(tiny24):
    clip = tiny24.model
    tokens = tiny24.tokenizer(["X X X flawless bottle.", "X X X damaged bottle with a crack at top."])
    with torch.no_grad():
        expected = clip.encode_text(tokens)
        ours = encode_text_embeddings(clip, clip.token_embedding(tokens), tokens)  # cut after the EOT
    assert torch.allclose(ours, expected, atol=1e-5)


def test_prompt_learner_gradients_reach_context_and_meta_net(tiny24):
    torch.manual_seed(0)
    clip = tiny24.model
    learner = PromptLearner(n_ctx=4, text_width=32, embed_dim=32, meta_net=True)
    prompts = build_prompts("bottle", ["crack"], "top", ("flawless",), ("damaged", "broken"))
    bias = learner.image_bias(torch.randn(1, 32))
    fn, fa = learner(clip, tiny24.tokenizer, prompts, (bias[0][0], bias[1][0]))
    assert fn.shape == (1, 32) and fa.shape == (2, 32)
    group_features(fn, fa)[1].sum().backward()
    assert learner.ctx_abnormal.grad.abs().sum() > 0
    assert learner.meta_net[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in clip.parameters())  # CLIP itself stays frozen


def test_prompt_learner_replaces_only_placeholders(tiny24):
    clip = tiny24.model
    learner = PromptLearner(n_ctx=3, text_width=32, embed_dim=32, meta_net=False)
    tokens = tiny24.tokenizer(["X X X flawless bottle."])
    with torch.no_grad():
        learner.ctx_normal.copy_(clip.token_embedding(tokens)[0, 1:4])  # the placeholders' own embeddings
        prompts = build_prompts("bottle", ["crack"], "top", ("flawless",), ("damaged",))
        fn, _ = learner(clip, tiny24.tokenizer, prompts)
        assert torch.allclose(fn, clip.encode_text(tokens), atol=1e-5)


def test_group_features_are_normalised_means():
    n = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    a = torch.tensor([[0.0, -1.0]])
    f = group_features(n, a)
    assert torch.allclose(f, torch.tensor([[2**-0.5, 2**-0.5], [0.0, -1.0]]), atol=1e-6)


# ---- the network ----------------------------------------------------------------------------


@pytest.mark.parametrize("qkv_head,n_linear,fused", [("both", 4, 8), ("train", 4, 4), ("none", 0, 4)])
def test_model_forward_shapes_and_qkv_modes(tiny24, qkv_head, n_linear, fused):
    cfg = FiloConfig(qkv_head=qkv_head, normal_states=("flawless",), abnormal_states=("damaged",))
    model = build_model(tiny24, cfg).eval()
    prompts = [build_prompts("bottle", ["crack", "chip"], "top", cfg.normal_states, cfg.abnormal_states)] * 2
    with torch.no_grad():
        out = model(torch.randn(2, 3, 28, 28), prompts)
    assert out.text.shape == (2, 2, 32) and out.logits.shape == (2, 2)
    assert set(out.mmci_maps) == {6, 12, 18, 24} and len(out.linear_maps) == n_linear
    assert out.two_class.shape == (2, 2, 28, 28) and out.anomaly_map.shape == (2, 28, 28)
    maps = list(out.mmci_maps.values()) + (list(out.linear_maps.values()) if qkv_head == "both" else [])
    assert len(maps) == fused and torch.allclose(out.two_class, sum(maps) / fused, atol=1e-6)
    assert torch.allclose(out.score, global_score(out.logits, out.anomaly_map))
    assert not any(k.startswith("backbone.") for k in model.trainable_state_dict())


def test_temperature_default_and_clip_logit_scale(tiny24):
    assert build_model(tiny24, FiloConfig()).temperature == pytest.approx(0.07)
    clip_scale = build_model(tiny24, FiloConfig(temperature=None)).temperature
    assert clip_scale == pytest.approx(1 / float(tiny24.model.logit_scale.exp()))


def test_model_rejects_layers_before_vv_path(tiny24):
    with pytest.raises(ValueError, match="vv_from"):
        build_model(tiny24, FiloConfig(layers=(3, 12)))


def test_top_descriptions_best_state_per_description():
    prompts = build_prompts("bottle", ["crack", "chip"], "top", ("good",), ("damaged", "broken"))
    abnormal = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
    top = top_descriptions(torch.tensor([1.0, 0.0]), abnormal, prompts, k=5)
    assert top == [("damaged bottle with crack at top.", pytest.approx(1.0)),
                   ("damaged bottle with chip at top.", pytest.approx(0.0))]


# ---- the method -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [28, 56])
def test_detector_predicts_maps_of_input_size(size, caplog):
    from anomalens.detector import Detector
    from anomalens.methods.filo import method as filo_method

    filo_method._warned_no_grounding = False
    det = Detector(method="filo", backbone="test-tiny-24", image_size=size, category="bottle")
    det.fit([])
    rng = np.random.default_rng(0)
    images = [LoadedImage("a", rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)),
              LoadedImage("b", rng.integers(0, 255, (33, 21, 3), dtype=np.uint8))]
    with caplog.at_level(logging.WARNING, logger="anomalens.methods.filo"):
        results = det.predict(images)
        det.predict(images[:1])
    assert [r.anomaly_map.shape for r in results] == [(40, 60), (33, 21)]
    assert all(0.0 <= r.score <= 2.0 for r in results)
    assert len(results[0].descriptions) == 5 and all("at center" in t for t, _ in results[0].descriptions)
    assert sum("no Grounding DINO" in rec.message for rec in caplog.records) == 1  # logged once
    assert results[0].to_record()["grounding"] == "off"  # and said in every results.jsonl record


def test_position_average_without_grounding():
    from anomalens.detector import Detector

    det = Detector(method="filo", backbone="test-tiny-24", image_size=28, position_without_grounding="average")
    img = LoadedImage("a", np.full((28, 28, 3), 128, dtype=np.uint8))
    (result,) = det.predict([img])
    assert result.anomaly_map.shape == (28, 28) and len(result.descriptions) == 5


def test_fit_ignores_references():
    from anomalens.methods import create_method

    method = create_method("filo", backbone="test-tiny-24", image_size=28)
    method.fit([LoadedImage("r", np.zeros((28, 28, 3), dtype=np.uint8))])
    assert method.num_references == 0


def test_real_backbone_without_checkpoint_is_a_clear_error():
    from anomalens.methods import create_method

    with pytest.raises(MissingCheckpointError, match="anomalens train filo"):
        create_method("filo")


def test_prompt_cache_filled_in_inference_mode_still_trains(tiny24):
    learner = PromptLearner(n_ctx=2, text_width=32, embed_dim=32, meta_net=False)
    prompts = build_prompts("bottle", ["crack"], "top", ("good",), ("damaged",))
    with torch.inference_mode():
        learner(tiny24.model, tiny24.tokenizer, prompts)
    fn, fa = learner(tiny24.model, tiny24.tokenizer, prompts)
    (fn.sum() + fa.sum()).backward()
    assert learner.ctx_normal.grad is not None
