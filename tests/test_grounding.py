"""Grounding DINO boxes for FiLo: filtering, lambda weighting, positions, and a tiny random detector."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomalens.images import LoadedImage
from anomalens.methods.filo.grounding import (
    GROUNDING_HINT,
    GroundingDetector,
    MissingGroundingError,
    box_position,
    box_weight_map,
    decode_detections,
    ground_from_detections,
    grounding_prompt,
    phrase_matches,
    released_box_position,
    released_grounding_prompt,
    select_boxes,
)
from anomalens.text.prompts import POSITIONS, position_word

# ---- post-processing on synthetic detector outputs ---------------------------------------


pytestmark = pytest.mark.usefixtures("one_torch_thread")



def test_select_boxes_threshold_and_area():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 100, 100], [5, 5, 20, 20], [50, 50, 60, 60]], dtype=float)
    scores = np.array([0.5, 0.9, 0.2, 0.26])
    kept, kept_scores = select_boxes(boxes, scores, (100, 100))
    # the whole-image box (area 1.0 >= 0.7) and the low-score box are dropped
    assert kept.tolist() == [[0, 0, 10, 10], [50, 50, 60, 60]]
    assert kept_scores.tolist() == [0.5, 0.26]


def test_select_boxes_falls_back_to_single_best():
    boxes = np.array([[0, 0, 100, 100], [10, 10, 20, 20]], dtype=float)
    kept, scores = select_boxes(boxes, np.array([0.9, 0.1]), (100, 100))
    assert kept.tolist() == [[0, 0, 100, 100]] and scores.tolist() == [0.9]
    empty, _ = select_boxes(np.zeros((0, 4)), np.zeros(0), (10, 10))
    assert empty.shape == (0, 4)


def test_box_weight_map_lambda_outside():
    w = box_weight_map(np.array([[1, 0, 3, 2]]), (4, 5), weight_outside=0.7)
    expected = np.full((4, 5), 0.7, dtype=np.float32)
    expected[0:2, 1:3] = 1.0  # pixel centres 1.5 and 2.5 (x), 0.5 and 1.5 (y) lie inside
    assert np.array_equal(w, expected)
    two = box_weight_map(np.array([[0, 0, 1, 1], [4, 3, 5, 4]]), (4, 5), 0.5)
    assert two[0, 0] == 1.0 and two[3, 4] == 1.0 and two[2, 2] == 0.5
    assert np.array_equal(box_weight_map(np.zeros((0, 4)), (2, 2)), np.ones((2, 2), np.float32))


@pytest.mark.parametrize(
    "box,word",
    [
        ((0, 0, 10, 10), "top left"),
        ((40, 0, 60, 10), "top"),
        ((90, 0, 100, 10), "top right"),
        ((0, 45, 10, 55), "left"),
        ((45, 45, 55, 55), "center"),
        ((90, 40, 100, 60), "right"),
        ((0, 90, 10, 100), "bottom left"),
        ((45, 90, 55, 100), "bottom"),
        ((90, 90, 100, 100), "bottom right"),
    ],
)
def test_box_position_on_3x3_grid(box, word):
    assert box_position(np.array(box, dtype=float), (100, 100)) == word


def test_box_position_uses_width_for_x_and_height_for_y():
    # a wide image: x = 150 of 200 is the right column; y = 10 of 30 is the middle row
    assert box_position(np.array([140, 5, 160, 15]), (30, 200)) == position_word(150, 10, 200, 30) == "right"
    assert box_position(None, (10, 10)) == "center"


def test_decode_detections_sigmoid_max_over_prompt_tokens():
    logits = torch.tensor([[0.0, 2.0, 9.0], [-1.0, -2.0, 9.0]])  # the last token is padding
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.1, 0.1, 0.4, 0.4]])
    xyxy, scores = decode_detections(logits, boxes, torch.tensor([1, 1, 0]), (50, 100))
    assert np.allclose(scores, [1 / (1 + np.exp(-2.0)), 1 / (1 + np.exp(1.0))])
    assert np.allclose(xyxy[0], [40, 15, 60, 35])
    assert np.allclose(xyxy[1], [0, 0, 30, 15])  # clamped to the image


def test_ground_from_detections_best_box_position():
    g = ground_from_detections(np.array([[80, 0, 100, 20], [0, 0, 10, 10]], float), np.array([0.3, 0.8]), (100, 100))
    assert g.position == "top left" and g.best.tolist() == [0, 0, 10, 10]
    assert g.weight_map(0.7)[95, 95] == pytest.approx(0.7)


def test_grounding_prompt_format():
    text = grounding_prompt(["Crack in the glass.", "crack"], generic=("defect", "crack"))
    assert text == "defect . crack . crack in the glass ."


def test_missing_grounding_folder_names_what_to_fetch(tmp_path):
    with pytest.raises(MissingGroundingError) as err:
        GroundingDetector(tmp_path / "nope")
    message = str(err.value)
    assert "IDEA-Research/grounding-dino-base" in message and "--grounding PATH" in message
    assert GROUNDING_HINT in message


# ---- a tiny randomly initialised Grounding DINO, saved and loaded from a folder ------------

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "defect", "damage", "crack", "scratch", "hole",
         "stain", "contamination", "in", "the", "glass", "on", "rim", "chip", "small", "large", "broken", "piece"]


@pytest.fixture(scope="module")
def tiny_grounding_dino(tmp_path_factory) -> str:
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("grounding-dino-tiny")
    # The vocabulary as a dict: recent `transformers` ignore vocab_file here and map every word to [UNK].
    tokenizer = transformers.BertTokenizerFast(vocab={w: i for i, w in enumerate(VOCAB)}, do_lower_case=True)
    backbone = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1], layer_type="basic",
        out_features=["stage2", "stage3", "stage4"],
    )
    text = transformers.BertConfig(
        vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64,
    )
    # GroupNorm(32, d_model) needs d_model >= 32; two decoder layers so the box heads can be tied.
    config = transformers.GroundingDinoConfig(
        backbone_config=backbone, text_config=text, use_pretrained_backbone=False, use_timm_backbone=False,
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=8, max_text_len=32,
        num_feature_levels=3,
    )
    torch.manual_seed(0)
    model = transformers.GroundingDinoForObjectDetection(config)
    image_processor = transformers.GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 64})
    processor = transformers.GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return str(folder)


def test_tiny_grounding_dino_from_folder(tiny_grounding_dino):
    detector = GroundingDetector(tiny_grounding_dino)
    rgb = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    g = detector(rgb, grounding_prompt(["crack in the glass", "small chip on the rim"]))
    assert g.image_hw == (40, 50) and len(g.boxes) >= 1 and g.boxes.shape[1] == 4
    assert g.best is not None and (g.boxes[:, 0] <= g.boxes[:, 2]).all()
    assert g.position == box_position(g.best, (40, 50))
    assert g.weight_map().shape == (40, 50)


def test_filo_with_grounding_weights_map_outside_boxes(tiny_grounding_dino):
    from anomalens.detector import Detector

    rgb = np.random.default_rng(1).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    img = LoadedImage("q", rgb)
    det = Detector(method="filo", backbone="test-tiny-24", image_size=28, category="bottle",
                   grounding=tiny_grounding_dino, outside_box_weight=0.7)
    (with_boxes,) = det.predict([img])
    found = det.method.grounding_dino(rgb, grounding_prompt(det.method._descriptions()))
    # the same network without boxes, at the detector's position word
    det.method.grounding_dino = None
    det.method._locate = lambda _img: (found.position, None)
    (plain,) = det.predict([img])
    weight = found.weight_map(0.7)
    assert np.allclose(with_boxes.anomaly_map, plain.anomaly_map * weight, atol=1e-6)
    assert (weight == 0.7).any() or (weight == 1.0).all()
    assert all(f"at {found.position}" in text for text, _ in with_boxes.descriptions)
    assert with_boxes.to_record()["grounding"] == "on"


def test_long_prompts_are_cut_at_phrase_boundaries(tiny_grounding_dino):
    detector = GroundingDetector(tiny_grounding_dino)
    long = grounding_prompt([f"crack in the glass {i}" for i in range(20)])
    fitted = detector.fit_prompt(long)
    assert len(detector.processor.tokenizer(fitted)["input_ids"]) <= 32
    assert long.startswith(fitted[:-2]) and fitted.endswith(" .")


# ---- the released caption and phrase filter ---------------------------------------------------


def test_released_caption_words_then_descriptions():
    assert released_grounding_prompt(["Crack in the glass", "small chip"]) == (
        "anomaly . damage . broken . defect . contamination . crack in the glass . small chip."
    )


def test_phrase_filter_is_a_substring_test():
    words = ["defect", "crack in the glass"]
    assert phrase_matches("defects", words)  # the released test: is a word inside the phrase?
    assert phrase_matches("crack in the glass .", words)
    assert not phrase_matches("glass", words)
    assert not phrase_matches("", words)


def test_phrase_filter_keeps_only_matching_boxes(tiny_grounding_dino):
    detector = GroundingDetector(tiny_grounding_dino, threshold=0.0)  # keep every box, then filter
    rgb = np.random.default_rng(2).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    prompt = released_grounding_prompt(["crack in the glass"])
    everything = detector(rgb, prompt)
    labels = ["crack in the glass", "rim", "defect", "piece"]

    def fake_phrases(logits, input_ids, boxes, kept):
        return [labels[i % len(labels)] for i in range(len(kept))]

    detector.phrases = fake_phrases
    filtered = detector(rgb, prompt, phrase_filter=["crack in the glass"])
    expected = [i for i in range(len(everything.boxes)) if labels[i % len(labels)] in ("crack in the glass", "defect")]
    assert filtered.boxes.tolist() == everything.boxes[expected].tolist()
    if len(expected):
        assert filtered.best.tolist() == everything.boxes[expected][np.argmax(everything.scores[expected])].tolist()
    nothing = detector(rgb, prompt, phrase_filter=[])
    detector.phrases = lambda *a: ["rim"] * len(a[3])
    nothing = detector(rgb, prompt, phrase_filter=["crack in the glass"])
    assert len(nothing.boxes) == 0 and nothing.best is None and nothing.position == "center"


def test_phrases_decode_the_hot_caption_tokens(tiny_grounding_dino):
    detector = GroundingDetector(tiny_grounding_dino)
    ids = torch.tensor(detector.processor.tokenizer("crack . rim .")["input_ids"])
    assert ids[1] != ids[3]  # real words, not [UNK]
    logits = torch.full((2, 32), -10.0)
    logits[0, 1] = 10.0  # "crack"
    logits[1, 3] = 10.0  # "rim"
    boxes = np.array([[0, 0, 5, 5], [10, 10, 20, 20]], dtype=float)
    assert detector.phrases(logits, ids, boxes, boxes[::-1]) == ["rim", "crack"]


def test_original_layout_file_says_how_to_convert(tmp_path):
    path = tmp_path / "grounding_train_on_visa.pth"
    torch.save({"backbone.0.patch_embed.proj.weight": torch.zeros(1)}, path)
    with pytest.raises(MissingGroundingError, match=r"convert_grounding_dino_to_hf\.py"):
        GroundingDetector(path)


def test_released_position_cells_and_gaps():
    assert released_box_position(None, (100, 100)) == "center"
    # 518-px image: the centre's pixel coordinates are the released ones.
    assert released_box_position(np.array([0, 0, 100, 100]), (518, 518)) == "top left"
    assert released_box_position(np.array([400, 200, 500, 300]), (518, 518)) == "right"
    # centre x = 172.5 lies between the released cells 0-172 and 173-344: all nine positions.
    assert released_box_position(np.array([170, 0, 175, 10]), (518, 518)) == POSITIONS
    # other image sizes are scaled to 518 first: x = 0.5 of the width is the middle column.
    assert released_box_position(np.array([40, 0, 60, 10]), (100, 100)) == "top"


def test_released_checkpoint_with_grounding_uses_the_released_rules(tiny_grounding_dino, tmp_path):
    from test_filo_released import ARCH, SIZE, released_state

    from anomalens.detector import Detector

    path = tmp_path / "filo_train_on_mvtec.pth"
    torch.save({"filo": released_state()}, path)
    det = Detector(method="filo", checkpoint=str(path), backbone=ARCH, image_size=SIZE, category="bottle",
                   grounding=tiny_grounding_dino)
    rgb = np.random.default_rng(3).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    calls = []
    real = det.method.grounding_dino.__call__

    def spy(image, prompt, phrase_filter=None):
        calls.append((prompt, phrase_filter))
        return real(image, prompt, phrase_filter=phrase_filter)

    det.method.grounding_dino = spy
    (result,) = det.predict([LoadedImage("q", rgb)])
    prompt, phrase_filter = calls[0]
    assert prompt.startswith("anomaly . damage . broken . defect . contamination . ")
    assert phrase_filter == det.method._descriptions()
    assert result.to_record()["grounding"] == "on" and result.anomaly_map.shape == (40, 50)
