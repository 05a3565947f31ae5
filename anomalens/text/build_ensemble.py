"""Write ``data/fade_ensemble.json``, the object-agnostic sentence ensemble used by FADE.

Each hand-written description (a generic subject plus its condition, e.g. "a metal surface
with a deep scratch") is placed in each of a few photo-caption frames; a short list of
free-standing sentences is added; the result is deduplicated case- and
whitespace-insensitively. The output is deterministic, and a test checks that it matches
the committed file byte for byte.

    python -m anomalens.text.build_ensemble            # rewrite the packaged file
    python -m anomalens.text.build_ensemble --check    # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from anomalens.text.prompts import dedupe

OUTPUT = Path(__file__).resolve().parent / "data" / "fade_ensemble.json"

SOURCE = (
    "anomalens: hand-written object-agnostic descriptions, each placed in "
    "four photo-caption frames, plus free-standing sentences; built by anomalens/text/build_ensemble.py"
)

#: Caption frames; ``{}`` receives a description that starts with an article.
FRAMES: tuple[str, ...] = (
    "a photo of {}.",
    "a close-up photo of {}.",
    "a cropped photo of {}.",
    "an inspection photo of {}.",
)

# American spelling ("color", "mold") because it dominates the captions CLIP was trained on.
ANOMALOUS_DESCRIPTIONS: tuple[str, ...] = (
    # scratches and abrasion
    "a surface with a deep scratch",
    "a polished surface with a long straight scratch",
    "a surface covered in fine hairline scratches",
    "a glossy coating with a shallow scuff mark",
    "a metal surface with crossing scratch marks",
    "a part with an abrasion worn into its surface",
    "a smooth surface with a curved scratch near the edge",
    # dents and deformation
    "a metal surface with a small round dent",
    "a part with a dented edge",
    "a component that is bent out of shape",
    "a part with a warped, uneven outline",
    "a rim that is crushed flat on one side",
    "an object with a squashed, deformed body",
    "a thin part that is twisted along its length",
    "a surface with a sunken, depressed region",
    "a surface with a raised swelling",
    "a round part with an irregular, out-of-round outline",
    "a part that is undersized and misshapen",
    # cracks
    "a surface with a thin hairline crack",
    "a rigid part with a crack running across it",
    "a brittle material with a branching network of cracks",
    "a glazed surface with a web of fine cracks",
    "a part split completely into two pieces",
    "a coating with a crack at its corner",
    "a cover that is cracked and partly caved in",
    # chips and breakage
    "a part with a chipped edge",
    "a ceramic surface with a chip missing from the rim",
    "a broken part with a jagged fracture line",
    "a shell with a broken fragment missing",
    "an edge with a small notch broken out of it",
    "a granular surface with a crumbling, broken area",
    "a part with a corner broken off",
    # holes, cuts and tears
    "a surface with a small punctured hole",
    "a sheet of material with a hole torn through it",
    "a flexible material with a clean cut across it",
    "a soft material with a ragged tear",
    "a surface with a narrow slit cut into it",
    "a coating pierced by several pinholes",
    "a surface with a hollow, sunken pit",
    "a thin layer with a round hole punched through it",
    # fraying and loose fibres
    "a woven material with frayed, loose threads",
    "a fabric surface with a pulled thread sticking out",
    "a textile with a snag and a loop of yarn pulled out",
    "a woven band with a broken, unravelling strand",
    "a fibrous surface with a bald patch where the fibers are missing",
    "a stitched seam that has come apart",
    "a frayed edge with fibers hanging loose",
    # contamination and stains
    "a surface with a dark stain",
    "a clean surface contaminated with dust and grit",
    "a surface with an oily smudge",
    "a surface spotted with dark specks",
    "a light surface with a brown discolored spot",
    "a surface with a greasy fingerprint",
    "a surface with a patch of dried liquid residue",
    "a surface with a drip of dried liquid",
    "a surface with a water mark left by an evaporated droplet",
    "a surface with a blob of excess glue",
    "a surface with a smear of adhesive",
    "a surface with a streak of dried glue",
    "a surface with a sticky residue of tape",
    "a surface with a stray hair lying on it",
    "a surface with a foreign particle stuck to it",
    "a surface with a small piece of debris on it",
    "a surface with a loose fiber caught on it",
    "a surface with a shiny metal shaving stuck to it",
    "a surface with an embedded dark particle",
    "a part with a splash of paint where it does not belong",
    "a surface with an ink blot",
    "a surface with fuzzy mold spots",
    "a surface with a spot of a slightly different shade",
    # discoloration and burning
    "a surface with a faded, bleached patch",
    "a part with an uneven, blotchy color",
    "a surface with a region of the wrong color",
    "a surface with yellowed, discolored areas",
    "a surface with burn marks and scorched spots",
    "a part with a dark discolored band",
    "a surface with a burnt, blackened edge",
    "a surface with a gray streak across it",
    # corrosion
    "a metal part with patches of reddish rust",
    "a metal surface pitted by corrosion",
    "a metal contact with greenish oxidation",
    "a surface with flaking corrosion",
    # burrs and surplus material
    "a machined edge with a sharp burr",
    "a molded part with excess flash along the seam",
    "a part with a lump of extra material on it",
    "a surface with a raised bump of surplus material",
    "a part with a thin sliver of material hanging off the edge",
    "a surface with a drip of excess material that has hardened",
    # bubbles, peeling and wrinkles
    "a coating with trapped air bubbles",
    "a painted surface with blisters",
    "a surface layer that is peeling away",
    "a label that is peeling off at one corner",
    "a film with wrinkles and creases",
    "a flexible sheet with a deep fold line",
    "a surface with puckered, wrinkled material",
    "a clear material with a bubble trapped inside",
    "a rough surface with an uneven, grainy texture",
    # print errors
    "a printed marking that is smeared",
    "a printed label with missing characters",
    "a printed pattern that is misaligned and offset",
    "a printed marking that is blurred and doubled",
    "a surface with a print that is faint and partly missing",
    "a part with printed text in the wrong place",
    "a surface with a stray printed mark",
    # missing, extra and misplaced parts
    "an assembly with a missing part",
    "an assembly with one component out of place",
    "a component mounted crooked and misaligned",
    "an assembly with a part installed upside down",
    "an assembly with an extra part that should not be there",
    "a set of items with one piece missing from the group",
    "a component that has shifted away from its correct position",
    "an assembly with a loose, detached piece",
    "a part with a gap where a piece should be",
    "a part rotated away from its correct orientation",
    "a group of pieces stuck together that should be separate",
    "an assembly with two parts swapped",
    "a part of the wrong type mixed in with the others",
    # electronics
    "an electronic component with a bent lead",
    "an electronic component with a broken pin",
    "an electronic component with a lead cut short",
    "a circuit with a missing component",
    "a circuit with a blob of excess solder",
    "a circuit with a cold, dull solder joint",
    "a circuit with a solder bridge between two pins",
    "a circuit with a lifted component lead",
    "a circuit with a scratched conductive track",
    "a circuit with a melted, scorched component",
    "a connector with a pin pushed out of line",
    "an electronic component with a cracked housing",
    # wires and insulation
    "a wire with cracked insulation",
    "a wire with its insulation cut open",
    "a stranded conductor with a strand poking out",
    "an insulated wire with the bare conductor showing",
    # threads, tips, heads and teeth
    "a threaded part with damaged threads",
    "a threaded part with a flattened, worn thread",
    "a part with a bent tip",
    "a part with a damaged head",
    "a part with a worn, rounded corner",
    "a brush with splayed, messy bristles",
    "a row of interlocking teeth with a broken tooth",
    "a row of teeth with a gap where a tooth is missing",
    "a sealed edge that is open and not closed properly",
    "a rough, uneven edge on a part",
)

NORMAL_DESCRIPTIONS: tuple[str, ...] = (
    # generic good condition
    "a clean surface",
    "a smooth, even surface",
    "a flawless surface with no scratches",
    "a perfect part with no visible defects",
    "an unblemished surface with a uniform finish",
    "a flawless item with a clean appearance",
    "a pristine part straight from production",
    "a good quality part with no flaws",
    "a clean industrial part",
    "a normal surface as expected from production",
    "a standard part with a regular appearance",
    "a product in good condition",
    "a defect-free product ready for shipping",
    "a normal part that passed inspection",
    "a part that meets quality standards",
    "an item without any defect",
    "a perfectly formed part",
    "a brand-new component without wear",
    "a well made component with precise dimensions",
    # color
    "a surface with a consistent color throughout",
    "a surface with uniform color and no discoloration",
    "an evenly colored material with no faded patches",
    "an unblemished natural surface with even coloring",
    "a surface with no dark marks or burn spots",
    "an evenly browned surface with no burnt spots",
    # shape and integrity
    "a part with clean, sharp edges",
    "an intact part with no cracks or chips",
    "a solid part with no cracks",
    "a shell that is whole and unbroken",
    "a part with a regular, symmetric shape",
    "a round part with a smooth, even outline",
    "a part with its original shape, not bent or dented",
    "a part with smooth, rounded corners as designed",
    "a product with a consistent shape and size",
    "a piece with a uniform thickness",
    "a part with precise, straight lines",
    "a neatly finished edge",
    "an undamaged edge with no notches",
    "a surface that is level with no bumps or depressions",
    "a smooth, continuous surface with no breaks",
    "a smooth surface with no pits or pores",
    # assembly
    "a correctly assembled component",
    "an assembly with every part in its correct place",
    "a component that is straight and well aligned",
    "a component seated flat and square on its base",
    "an assembly with no loose or detached pieces",
    "a part in the correct orientation",
    "an object with all parts present and correctly positioned",
    "a set of items complete with no piece missing",
    "a row of identical parts evenly spaced",
    "a component with symmetric, well centered features",
    "a properly sealed part with no gaps",
    "a tidy assembly with neatly routed wires",
    "a group of separate pieces that do not touch each other",
    # cleanliness
    "a surface free of stains and spots",
    "a surface free of dust and debris",
    "a surface without residue or contamination",
    "a clean, dry surface with no liquid residue",
    "a surface without any glue or adhesive marks",
    "a surface with no fingerprints or smudges",
    "a surface free of foreign objects",
    "a transparent surface that is clear and spotless",
    "a spotless surface with nothing lying on it",
    # texture, materials and finish
    "a uniform texture with a regular repeating pattern",
    "a surface with a regular, evenly spaced pattern",
    "a surface with a uniform pattern and no missing areas",
    "a surface with a consistent, fine texture",
    "a textured surface with no irregularities",
    "a granular surface with an even, regular structure",
    "a surface with an even, natural grain",
    "a mesh with evenly spaced openings",
    "a woven material with tight, even threads",
    "a fabric surface with no loose threads",
    "a material with no tears or fraying",
    "a seam that is straight and evenly stitched",
    "a surface with no holes or cuts",
    "a smooth coating without bubbles or blisters",
    "a coating that adheres evenly with no peeling",
    "a part with an intact, smooth coating",
    "a glossy finish with an even sheen",
    "a matte finish with a consistent appearance",
    "a metal surface with a clean, even polish",
    "a metal part free of rust and corrosion",
    "a metal contact that is bright and clean",
    "a ceramic surface with an intact, even glaze",
    "a plastic part with a smooth molded finish",
    "a molded part with clean seams and no flash",
    "a rubber part with an even surface and no tears",
    "a flat sheet with no wrinkles or folds",
    "a glass-like surface with no bubbles or inclusions",
    "a smooth surface with no scuffs or abrasions",
    "a part with no extra material or burrs",
    "an undamaged component with a uniform surface",
    # printing
    "a printed marking that is sharp and legible",
    "a label printed cleanly and in the right place",
    "a printed pattern that is crisp and aligned",
    "an evenly printed surface with no smears",
    "a paper label that lies flat and is fully attached",
    # electronics and wires
    "an electronic component with straight, intact leads",
    "a circuit with neat, shiny solder joints",
    "a circuit with all components mounted in place",
    "a connector with all pins straight and in line",
    "a connector with properly seated pins",
    "a conductive track that is continuous and undamaged",
    "a wire with intact insulation",
    "a stranded conductor with all strands neatly bundled",
    # threads, tips, heads and teeth
    "a threaded part with clean, undamaged threads",
    "a part with a clean, undamaged tip",
    "a fastener with a clean, undamaged head",
    "a brush with neat, evenly trimmed bristles",
    "a row of interlocking teeth that are complete and evenly spaced",
    "a sealed edge that is fully closed",
)

ANOMALOUS_SENTENCES: tuple[str, ...] = (
    "there is a visible scratch on the surface.",
    "there is a crack on the part.",
    "the surface shows an irregular defect.",
    "the part is visibly damaged.",
    "something is wrong with this part.",
    "a small defect is visible on the surface.",
    "the object is broken in one place.",
    "a piece of the part has broken away.",
    "a foreign object lies on the surface.",
    "the surface is stained and dirty.",
    "one component is missing from the assembly.",
    "a part is out of position.",
    "the edge of the part is chipped.",
    "the material is torn and frayed.",
    "the surface has an unexpected spot.",
    "the color of one region does not match the rest.",
    "the print on the part is faulty.",
    "the shape of the part is deformed.",
    "a defective region stands out from the surrounding surface.",
    "this part would fail a quality inspection.",
)

NORMAL_SENTENCES: tuple[str, ...] = (
    "the surface looks clean and uniform.",
    "nothing is wrong with this part.",
    "the part is in perfect condition.",
    "every component is in its correct place.",
    "the surface is smooth and even everywhere.",
    "the color is consistent across the whole surface.",
    "the part has no visible defects.",
    "the object is intact and undamaged.",
    "the edges are clean and straight.",
    "the texture is regular from one side to the other.",
    "the assembly is complete and correctly aligned.",
    "the print is sharp and in the right place.",
    "the material shows no tears, holes or fraying.",
    "no dirt or foreign material is present.",
    "the shape matches the intended design.",
    "this part would pass a quality inspection.",
    "a normal sample with no anomalies.",
    "a good sample from a production line.",
)


def build() -> dict:
    """The ensemble as a JSON-ready dict."""
    anomalous = dedupe(
        [f.format(d) for d in ANOMALOUS_DESCRIPTIONS for f in FRAMES] + list(ANOMALOUS_SENTENCES)
    )
    normal = dedupe([f.format(d) for d in NORMAL_DESCRIPTIONS for f in FRAMES] + list(NORMAL_SENTENCES))
    return {"version": 1, "source": SOURCE, "normal": normal, "anomalous": anomalous}


def render() -> str:
    """The exact text of the data file."""
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the file is up to date")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date; run python -m anomalens.text.build_ensemble")
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    data = build()
    print(f"wrote {args.output}: {len(data['normal'])} normal, {len(data['anomalous'])} anomalous")
    return 0


if __name__ == "__main__":
    sys.exit(main())
