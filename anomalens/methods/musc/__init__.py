"""`musc`: MuSc (Li, Huang, Xue, Zhou, ICLR 2024), zero-shot by mutual scoring of unlabeled images.

No references, prompts or training: the images of one run score each other. Normal patches
find many similar patches in the other images, a defect finds few.

* `lnamd.py`  LNAMD: per layer, layer norm and r x r neighbourhood averages for r in (1, 3, 5).
* `msm.py`    MSM: each patch's distance to its nearest patch in every partner image, combined by
              the interval average of the smallest 30 %; averaged over layers and degrees.
* `rscin.py`  RsCIN: image scores smoothed over each image's k most similar images, k in (1, 2, 3).
* `extract.py` layer maps from the embedded EfficientNet-Lite0 or from a CLIP ViT.
* `postprocess.py` optional steps outside the paper (off by default): photometric
              standardisation, map smoothing, median baseline, image score rules.
* `pseudo_references.py` zero-shot: patchknn on the batch's lowest-scored images.
* `fused_share.py` `knn_fused`: two patchknn recipes as one share, in the first one's units.
* `single_image_share.py` `single_image_knn_weight`: patchknn's single-image zero-shot beside the batch.
* `method.py` the method: a joint `predict` over the whole batch, references as known-normal.

Paper vs. official code (xrli-U/MuSc) vs. this implementation:

* Distance: Euclidean between L2-normalised features (paper and code). Our default since
  session 4 is `patch_norm="l2_length"`: the same unit vector plus the patch's length as one
  more channel (weight 4), chosen on the mean over our three categories (see below).
* Interval average: code's rule, int(fraction * partners) ranks; paper and code average the
  smallest 0 % .. 30 %, our default is 0 % .. 70 % (chosen with blocks 7, 10, 14 on the mean
  over our three categories, full test sets: README variants table; `interval=0,0.3` is the
  paper's). With too few partners for one rank we average the single smallest score (the
  code would fail).
* LNAMD: code's LayerNorm over each image's whole (C, H, W) map before aggregation (the paper
  says layer normalisation without this detail); its unfold + adaptive-average-pool equals an
  r x r average pool after L2 normalisation (see lnamd.py). The code's optional channel
  reduction (adaptive pooling to `feature_dim`) is the identity with its own setting; omitted.
* Layers: ViT-L-14-336 at 518 px, blocks 5, 11, 17, 23 (code: `feature_layers: [5, 11, 17, 23]`
  read with a 1-based block counter; the paper speaks of ViT-L-14's four stages, whose last
  blocks are 6, 12, 18, 24, our default before session 21). At 518 px the code rebuilds the
  model from its config, so it runs with nn.GELU (not the OpenAI weights' QuickGELU) and plain
  bicubic positional embeddings; `released_clip` (default) does the same
  (`benchmarks/musc_parity.py` checks the tower against the code's own). On the embedded CNN, whose layers
  have different grids, each layer is scored on its own grid and its map upsampled (bilinear)
  to the finest grid before the average over layers and degrees; the code interpolates the
  features to one grid first (a ViT has one grid, so both agree there). CNN default: blocks
  7, 10 (stride 16) and 14 (stride 32) at 256 px, chosen on our data (README variants
  table: block 14 lifts the pixel AUROC of large defects); finer blocks
  are average-pooled to stride 16 (`score_stride`), since a stride-8 grid costs 16 times more
  per image pair.
* Image score: maximum of the patch map. The code takes the maximum of the map upsampled to the
  input size (bilinear, align_corners=True): never above the grid's maximum, and a little below it
  when the peak cell falls between the sampled pixels (a 37-cell grid onto 518 px samples a cell
  centre exactly only at the borders; on 3 x 3-smoothed random 37 x 37 maps 1 % of the peak's
  height above the median on average, 2.7 % at most); not reproduced.
* RsCIN: code's window sizes (1, 2, 3) for MVTec AD and BTAD (VisA: 1, 8, 9); image features
  are CLIP's image embedding (code: class token after projection) or, on the CNN, the
  mean-pooled deepest block. The code min-max normalises scores before re-scoring; as every
  row of the re-scoring matrix sums to 1 that is only a change of scale, so we keep distance
  units (a threshold then means the same in every batch). Negative similarities are clipped to
  0. With one image in the batch RsCIN is skipped.
* Partners: the paper scores each image against all N - 1 others (N^2 image pairs); the code
  can split a large test set into `divide_num` random subsets scored separately. We give each
  image a seeded random sample of `max_partners` partners (keyed by the image's path, so
  independent of the order), default 32: N * 32 pairs, what a CPU can do for 1,000 images.
  On 100-image subsets of our data 32 partners scored as well as all 99 (README variants);
  `max_partners=0` is the paper's all-partner rule.
* Features are stored as float16 (`feature_dtype`) and multiplied in float32 chunks of at most
  `chunk_elements`; the maps differ from float32 storage by < 1e-3 (tests, benchmark).
* Optional steps that are in neither the paper nor the code, all off by default (screened on
  our data in session 3, README variants table; none helped on the mean over categories
  enough to become a default): `photometric` (per-image grey-level standardisation),
  `self_weight` (mix in the single-image score), `smoothing_sigma` (Gaussian blur of the map),
  `map_baseline` (subtract the image's median map level), `image_score_top` (top-fraction
  mean instead of the max), `edge_neighbourhood` (down-weight grid-edge cells). See
  `postprocess.py`.
* Magnitudes (session 4, not in the paper; README musc section): `patch_norm` "none" keeps the
  layer-normalised patch lengths (divided by sqrt(C)) and compares them by Euclidean distance;
  "l2_length" keeps the paper's unit direction and appends the length as one more channel,
  weighed by `length_weight`; `score_scale="median"` divides each (layer, degree)'s scores by
  their batch median; `intensity_weight` adds a grey-level layer (pooled grey minus the image's
  median, Euclidean), aimed at dark blotches and bright bands that the CNN's texture features
  hardly show: weight 4 by default since session 14 (README "The intensity layer"; 0 = the
  paper). See lnamd.py and msm.py.
* Not in the paper: `tile_above_aspect` scores an elongated image as overlapping square tiles of
  its short side (as patchknn does) instead of squashing it; a partner image is then all its tiles
  (a patch's distance to a partner is its nearest patch in any of them, `msm.nearest_per_group`),
  the image score is taken over all its tiles, RsCIN compares the mean of its tiles' features, and
  its map is the tiles' maps resized onto their boxes. 0 (the paper's squash) unless measured better.
* Not in the paper: reference images (`--refs`, `fit`) join every image's partners as
  known-normal images and are not scored; a batch of one image with no references falls back
  to single-image zero-shot (nearest other patch of the same image) with a warning, or raises
  with `single_image="error"`.
* Not in the paper (session 12, README "musc with references"): with references, `fit` also fits
  `patchknn` (its own defaults: the embedded backbone, its model side, coreset; flipped references until
  session 34, unflipped since: `reference_augment`) on them, and each image's score and map are
  `reference_knn_weight` (0.375 in sessions 13-34, 0.5 since) x patchknn's plus the rest x the mutual
  score's. Both are distances on similar scales (map medians 0.5-0.6 on our data), so they are added as
  they are, with no batch statistics.
  `reference_knn_weight=0` gives the rule before (references only join the partners).
* Not in the paper (session 13, README "Pseudo-references"): the tenth of the batch the mutual
  score ranks lowest (`pseudo_reference_share`) become `patchknn`'s references too: without
  references a patchknn of their own (its defaults without flips, weight `pseudo_reference_weight`,
  0.375), with references they join the references' bank (at the references' model side; a second
  coreset over both). Each of them is scored without its own patches. patchknn scores the batch
  once it is ranked, so the images are held until then (reduced to patchknn's largest side,
  384 px). Batches that give fewer than `pseudo_reference_minimum` (2) of them, i.e. under 15
  images, use the references alone (or none); `pseudo_reference_share=0` is the rule before.
  `pseudo_references.py`. Since session 32 (README "Pseudo-references picked twice") they are picked
  twice (`pseudo_reference_rounds` 2): the second pick ranks the batch by the joined score of the
  first (the mutual score and that patchknn's share), which lets fewer defects into the bank.
* Not in the paper (session 22, README "The texture recipe inside musc"): `knn_recipe` runs that
  patchknn share with one of patchknn's named recipes (`KNN_RECIPES`; `textured-surface` = per-image
  magnitudes and block 14). An opt-in: it raises magnetic_tile and steel_strip and costs the plates.
* Not in the paper (session 25, README "The fused share built in"): `knn_fused` runs a second patchknn
  share with a named recipe beside `knn_recipe`'s; each map is standardised by the median and MAD of the
  pseudo-references' own maps (with references and no pseudo-references: the references' leave-one-out
  maps, patchknn's `fused_recipe` levels), their pixelwise maximum is brought back to the first share's
  units and weighed as the share always is. `fused_share.py`. Session 26: `auto` (the default) fuses the
  texture recipe when the batch has no references and nothing with references, as measured. Session 34
  (README "References as the batch's own"): with references too (`knn_fused_with_references`), now that
  the references enter the share unflipped, as the pseudo-references do (`reference_augment`): flipped
  plates were what cost mpdd_metal_plate's image AUROC with the fused share.
* Not in the paper (session 29, README "The image's own patches beside the batch"): without references,
  `single_image_knn_weight` joins each output with patchknn's single-image zero-shot output (each image
  against its own patches), both standardised by their median and MAD on the batch's most normal images
  (the pseudo-references, at least the 16 lowest-scored), weighed and brought back to musc's units. A
  defect kind that many images of the batch share escapes mutual scoring but not its own image.
  `single_image_share.py`.
"""

from .method import MuSc, SingleImageBatchError
from .settings import MuScSettings

__all__ = ["MuSc", "MuScSettings", "SingleImageBatchError"]
