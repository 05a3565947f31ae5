"""The metadata an exported model carries, so that the .onnx file alone reproduces the detector.

Stored as one JSON string under the ONNX `metadata_props` key "anomalens" (readable with any
ONNX tool: `onnx.load(f).metadata_props`, or onnxruntime's `custom_metadata_map`):

* `format`: "anomalens-onnx", `format_version`: 1, `anomalens_version`
* `method`, `settings` (the method's full settings), `backbone`, `num_references`
* `preprocessing`: `resize` ("squash" | "pad"), `interpolation` (bicubic with antialiasing),
  `mean`, `std`, `value_range` ([0, 1] before normalising), `layout` ("NCHW", RGB), and
  `inputs`: one {`name`, `size`} per image input (FADE reads the image at several sizes),
  `tile_above_aspect` and `tile_overlap` (patchknn: an image whose long side exceeds that many
  short sides is cut into overlapping square tiles of its short side, `anomalens.tiling.tile_boxes`;
  each tile is one graph input, the score is the maximum over its tiles; absent or 0: no tiling),
  `tile_blend` (how the tiles' maps are joined where they overlap, `anomalens.tiling.tile_weights`:
  "ramps" or "mean"; absent: "mean", files written before session 33), and `tiles_scored_together`
  (zero-shot with tiles: feed one image's tiles as the batch, the graph compares each patch with all of them)
* `valid_patches`: for "pad", the name and grid of the 0/1 input that marks the patches lying on
  the image (the image score is the maximum over them); null otherwise
* `outputs`: `anomaly_map` (B, S, S) on the square model input of side `map_size`, `score` (B,),
  and for language methods `description_similarity` (B, n) against `descriptions`
* `batch`: "dynamic" or a fixed batch size
* `memory_bank`: null, {"mode": "constant"} or {"mode": "input", "input": name, "file": npy file
  next to the model, "shape"}
* `threshold`, `pixel_threshold`: as in a saved model's detector.json (null when not set)
"""

from __future__ import annotations

import json
from typing import Any

from .errors import OnnxModelError

METADATA_KEY = "anomalens"
FORMAT = "anomalens-onnx"
FORMAT_VERSION = 1
REQUIRED = ("method", "settings", "preprocessing", "outputs", "map_size", "batch")


def encode(meta: dict[str, Any]) -> str:
    return json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, **meta}, sort_keys=True)


def decode(props: dict[str, str], source: str) -> dict[str, Any]:
    """Parse and check the metadata of an ONNX file (`source` names it in errors)."""
    text = props.get(METADATA_KEY)
    if text is None:
        raise OnnxModelError(
            f"{source}: ONNX model without anomalens metadata (key {METADATA_KEY!r}); "
            "export it with `anomalens export` to run it with anomalens"
        )
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as err:
        raise OnnxModelError(f"{source}: anomalens metadata is not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise OnnxModelError(f"{source}: metadata key {METADATA_KEY!r} does not describe an anomalens model")
    if meta.get("format_version") != FORMAT_VERSION:
        raise OnnxModelError(
            f"{source}: anomalens ONNX format version {meta.get('format_version')!r}; "
            f"this anomalens reads version {FORMAT_VERSION}: export the model again"
        )
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise OnnxModelError(f"{source}: anomalens metadata lacks {', '.join(missing)}")
    return meta
