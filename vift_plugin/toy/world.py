"""Shapes world: seeded scenes of one to three coloured shapes on a 3x3 grid, with exact language about them.

Every scene renders to an ``IMAGE_SIZE`` square RGB picture whose grid cells are 28 pixels wide, so one
merged Qwen2-VL image token sees exactly one cell. The same words describe a scene everywhere: its
caption (``describe``), the scene text of the text-only instructions, and the answers of the visual QA.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image, ImageDraw

CELL = 28
GRID = 3
IMAGE_SIZE = CELL * GRID
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 40),
    "purple": (150, 60, 190),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = (
    "top left",
    "top middle",
    "top right",
    "middle left",
    "centre",
    "middle right",
    "bottom left",
    "bottom middle",
    "bottom right",
)
NUMBERS = ("zero", "one", "two", "three")
QUESTION_TYPES = ("colour", "shape", "position", "count")
BACKGROUND = (245, 245, 240)
MIN_SIZE, MAX_SIZE, JITTER = 17, 22, 2


@dataclass(frozen=True, order=True)
class Shape:
    """One shape: its grid cell (0..8, row-major), kind and colour; ``size``/``dx``/``dy`` only jitter the drawing."""

    cell: int
    kind: str
    colour: str
    size: int = 20
    dx: int = 0
    dy: int = 0

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]

    @property
    def place(self) -> str:
        return "in the centre" if self.position == "centre" else f"at the {self.position}"

    def words(self) -> str:
        return f"a {self.colour} {self.kind} {self.place}"


@dataclass(frozen=True)
class Scene:
    """Shapes sorted by cell, at most one per cell."""

    shapes: tuple[Shape, ...]

    @property
    def key(self) -> tuple[tuple[int, str, str], ...]:
        """What the language can tell apart (cells, kinds, colours): held-out splits compare keys."""
        return tuple((s.cell, s.kind, s.colour) for s in self.shapes)

    def describe(self) -> str:
        """The caption: ``a red circle at the top left, a blue square in the centre and ... .``"""
        parts = [s.words() for s in self.shapes]
        text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        return text + "."

    def render(self) -> Image.Image:
        image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
        draw = ImageDraw.Draw(image)
        for s in self.shapes:
            row, col = divmod(s.cell, GRID)
            cx, cy = col * CELL + CELL // 2 + s.dx, row * CELL + CELL // 2 + s.dy
            h = s.size // 2
            box = (cx - h, cy - h, cx + h, cy + h)
            fill = COLOURS[s.colour]
            if s.kind == "circle":
                draw.ellipse(box, fill=fill)
            elif s.kind == "square":
                draw.rectangle(box, fill=fill)
            else:
                draw.polygon([(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)], fill=fill)
        return image


@dataclass(frozen=True)
class Question:
    """A question about a scene with its exact one-phrase answer."""

    type: str
    text: str
    answer: str


def random_scene(rng: random.Random) -> Scene:
    count = rng.choice((1, 2, 2, 3, 3))
    cells = sorted(rng.sample(range(GRID * GRID), count))
    shapes = []
    for cell in cells:
        size = rng.randrange(MIN_SIZE, MAX_SIZE + 1)
        slack = JITTER
        shapes.append(
            Shape(
                cell,
                rng.choice(SHAPES),
                rng.choice(tuple(COLOURS)),
                size,
                rng.randint(-slack, slack),
                rng.randint(-slack, slack),
            )
        )
    return Scene(tuple(shapes))


def questions(scene: Scene) -> list[Question]:
    """Every question with a unique answer about ``scene``, in a fixed order."""
    found: list[Question] = []
    kinds = [s.kind for s in scene.shapes]
    colours = [s.colour for s in scene.shapes]
    for s in scene.shapes:
        if kinds.count(s.kind) == 1:
            found.append(Question("colour", f"what colour is the {s.kind}?", s.colour))
        if colours.count(s.colour) == 1:
            found.append(Question("shape", f"what shape is the {s.colour} one?", s.kind))
        found.append(Question("shape", f"what shape is {s.place}?", s.kind))
        found.append(Question("position", f"where is the {s.colour} {s.kind}?", s.position))
    found.append(Question("count", "how many shapes are there?", NUMBERS[len(scene.shapes)]))
    for kind in SHAPES:
        found.append(Question("count", f"how many {kind}s are there?", NUMBERS[kinds.count(kind)]))
    return found


def pick_question(scene: Scene, rng: random.Random) -> Question:
    """A question of a uniformly drawn type (types the scene cannot answer uniquely are redrawn)."""
    by_type: dict[str, list[Question]] = {}
    for q in questions(scene):
        by_type.setdefault(q.type, []).append(q)
    kind = rng.choice(sorted(by_type))
    return rng.choice(by_type[kind])


def scenes(seed: int, exclude: set[tuple[tuple[int, str, str], ...]] | None = None) -> Iterator[Scene]:
    """An endless seeded stream of scenes, skipping any whose ``key`` is in ``exclude``."""
    rng = random.Random(seed)
    while True:
        scene = random_scene(rng)
        if exclude is None or scene.key not in exclude:
            yield scene
