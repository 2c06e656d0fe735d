"""Procedural shapes data for the offline demo model (shared by train and eval scripts).

Pictures are 32x32 RGB: one shape (circle, square, triangle) in a named colour, at a named
position and size, on a background of another named colour. Captions are built from the same
parameters, e.g. "a small red circle in the top left on a blue background"; the size, position
and background phrases are optional ("a red circle on a blue background" works too).

Everything here is deterministic given a ``numpy.random.Generator``: drawing uses PIL at 4x
supersampling, then a box downsample (antialiased edges).

Also here: the word-level CLIP BPE tokenizer files (every caption word is one token; any other
word falls back to byte-level symbols) and the pixel geometry measures the eval script uses.
"""

from __future__ import annotations

import itertools
import json
import pathlib
from dataclasses import dataclass

import numpy as np
from make_tiny_model import bytes_to_unicode  # the same byte-level symbols
from PIL import Image, ImageDraw

SIZE = 32  # image size in pixels
SUPER = 4  # supersampling factor for antialiased drawing

SHAPE_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (30, 190, 40),
    "blue": (30, 60, 230),
    "yellow": (250, 230, 30),
    "cyan": (30, 220, 230),
    "magenta": (230, 40, 220),
    "orange": (250, 140, 20),
    "purple": (120, 40, 170),
}
BACKGROUND_ONLY: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
}
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {**SHAPE_COLOURS, **BACKGROUND_ONLY}
SHAPES = ("circle", "square", "triangle")
# Shape centres in pixels (x, y).
POSITIONS: dict[str, tuple[float, float]] = {
    "center": (16.0, 16.0),
    "top left": (9.5, 9.5),
    "top right": (22.5, 9.5),
    "bottom left": (9.5, 22.5),
    "bottom right": (22.5, 22.5),
}
SIZES: dict[str, float] = {"small": 4.5, "large": 8.0}  # half extent in pixels

# (colour, shape) pairs never drawn in training, in any position, size or background.
HELD_OUT: tuple[tuple[str, str], ...] = (
    ("red", "triangle"),
    ("green", "circle"),
    ("blue", "square"),
    ("magenta", "triangle"),
)

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MODEL_MAX_LENGTH = 20  # longest caption is 12 words + BOS/EOS


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    position: str
    size: str
    dx: float = 0.0  # small jitter of the centre, pixels
    dy: float = 0.0
    ds: float = 0.0  # small jitter of the half extent, pixels

    def caption(self, with_size: bool = True, with_pos: bool = True, with_bg: bool = True) -> str:
        words = ["a"]
        if with_size:
            words.append(self.size)
        words += [self.colour, self.shape]
        if with_pos:
            words += ["in", "the", self.position]
        if with_bg:
            words += ["on", "a", self.background, "background"]
        return " ".join(words)


def all_pairs(held_out: bool) -> list[tuple[str, str]]:
    """(colour, shape) pairs: the held-out ones, or all the others (seen in training)."""
    pairs = [(c, s) for c in SHAPE_COLOURS for s in SHAPES]
    return [p for p in pairs if (p in HELD_OUT) == held_out]


def random_scene(rng: np.random.Generator, pairs: list[tuple[str, str]], jitter: bool) -> Scene:
    colour, shape = pairs[rng.integers(len(pairs))]
    backgrounds = [b for b in BACKGROUND_COLOURS if b != colour]
    background = backgrounds[rng.integers(len(backgrounds))]
    position = list(POSITIONS)[rng.integers(len(POSITIONS))]
    size = list(SIZES)[rng.integers(len(SIZES))]
    if jitter:
        dx, dy = rng.uniform(-1.0, 1.0, size=2)
        ds = rng.uniform(-0.5, 0.5)
    else:
        dx = dy = ds = 0.0
    return Scene(shape, colour, background, position, size, float(dx), float(dy), float(ds))


def render(scene: Scene) -> np.ndarray:
    """Draw a scene: uint8 array (SIZE, SIZE, 3)."""
    big = SIZE * SUPER
    img = Image.new("RGB", (big, big), BACKGROUND_COLOURS[scene.background])
    draw = ImageDraw.Draw(img)
    cx, cy = POSITIONS[scene.position]
    cx, cy = (cx + scene.dx) * SUPER, (cy + scene.dy) * SUPER
    h = (SIZES[scene.size] + scene.ds) * SUPER
    fill = SHAPE_COLOURS[scene.colour]
    if scene.shape == "circle":
        draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif scene.shape == "square":
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    else:  # triangle pointing up, base 2h, height 2h: fills half its bounding box
        draw.polygon([(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)], fill=fill)
    img = img.resize((SIZE, SIZE), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.uint8)


def random_caption(rng: np.random.Generator, scene: Scene, dropout: float = 0.1) -> str:
    """Training caption: empty with probability ``dropout`` (for classifier-free guidance),
    otherwise the scene caption with each optional phrase dropped now and then."""
    if rng.random() < dropout:
        return ""
    return scene.caption(
        with_size=rng.random() > 0.25, with_pos=rng.random() > 0.25, with_bg=rng.random() > 0.15
    )


# --------------------------------------------------------------------------------- tokenizer


def caption_words() -> list[str]:
    words = {"a", "in", "the", "on", "background", "grey"}
    words |= set(SHAPES) | set(SIZES) | set(BACKGROUND_COLOURS)
    for p in POSITIONS:
        words |= set(p.split())
    return sorted(words)


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE of one word (as in the reference implementation)."""
    parts = [*word[:-1], word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = [(ranks.get(p, 1 << 30), i) for i, p in enumerate(itertools.pairwise(parts))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        a, b = parts[i], parts[i + 1]
        merged, j = [], 0
        while j < len(parts):
            if j < len(parts) - 1 and parts[j] == a and parts[j + 1] == b:
                merged.append(a + b)
                j += 2
            else:
                merged.append(parts[j])
                j += 1
        parts = merged
    return parts


def tokenizer_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level symbols (with and without "</w>") plus merges that make every caption word a
    single token. Merges are appended word by word at the lowest priority, so a word already
    merged to one token is never changed by later merges."""
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in caption_words():
        while len(parts := _bpe(word, ranks)) > 1:
            pair = (parts[0], parts[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            if pair[0] + pair[1] not in tokens:
                tokens.append(pair[0] + pair[1])
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_tokenizer(folder: str | pathlib.Path):
    """Write the CLIP tokenizer files into ``folder`` and return the loaded tokenizer."""
    from transformers import CLIPTokenizer

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = tokenizer_vocab_and_merges()
    tok = CLIPTokenizer(
        vocab=vocab,
        merges=list(merges),
        unk_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=MODEL_MAX_LENGTH,
    )
    tok.save_pretrained(folder)
    (folder / "vocab.json").write_text(
        json.dumps(vocab, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    merges_text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    (folder / "merges.txt").write_text(merges_text, encoding="utf-8")
    loaded = CLIPTokenizer.from_pretrained(folder)
    for word in caption_words():
        ids = loaded(word, add_special_tokens=False).input_ids
        assert len(ids) == 1, (word, ids)
    return loaded


# ------------------------------------------------------------------------- pixel measures


def _nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> np.ndarray:
    cols = np.array(list(palette.values()), dtype=np.float32)
    d = ((rgb[..., None, :].astype(np.float32) - cols) ** 2).sum(-1)
    return d.argmin(-1)


def measure(img: np.ndarray) -> dict[str, str]:
    """Read a picture's attributes back from its pixels (uint8 (H, W, 3)).

    background: median of the border pixels, nearest named background colour.
    colour: nearest named shape colour of each clearly non-background pixel, the most common.
    shape: fill ratio of the blob (soft alpha) in its bounding box: triangle ~0.5, circle ~0.79,
    square ~1. position: alpha-weighted centroid, nearest named position.
    size: square root of the blob area, nearest of the two sizes' expected areas.
    """
    from scipy import ndimage

    img = img.astype(np.float32)
    border = np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]])
    bg_rgb = np.median(border, axis=0)
    bg_names = list(BACKGROUND_COLOURS)
    background = bg_names[int(_nearest(bg_rgb, BACKGROUND_COLOURS))]
    dist = np.sqrt(((img - bg_rgb) ** 2).sum(-1))
    out = {"background": background, "colour": "?", "shape": "?", "position": "?", "size": "?"}
    fg = dist > 60
    if fg.sum() < 4:
        return out
    # Largest connected component of the foreground.
    labels, n = ndimage.label(fg)
    if n > 1:
        counts = np.bincount(labels.ravel())[1:]
        fg = labels == (1 + counts.argmax())
    # Colour: most common nearest shape colour among the strongest half of the blob pixels.
    strong = fg & (dist >= np.median(dist[fg]))
    col_names = list(SHAPE_COLOURS)
    votes = np.bincount(_nearest(img[strong], SHAPE_COLOURS), minlength=len(col_names))
    out["colour"] = col_names[int(votes.argmax())]
    # Soft alpha: projection of (pixel - bg) on (shape colour - bg), from the blob's core colour.
    fg_rgb = np.median(img[strong], axis=0)
    v = fg_rgb - bg_rgb
    alpha = np.clip(((img - bg_rgb) @ v) / max(float(v @ v), 1e-6), 0.0, 1.0)
    grown = ndimage.binary_dilation(fg, iterations=1)
    alpha = alpha * grown
    area = float(alpha.sum())
    if not (alpha > 0.5).any():
        return out
    # Soft bounding box: count the partial edge rows/columns by their max alpha.
    col_cov = alpha.max(axis=0)
    row_cov = alpha.max(axis=1)
    w, h = float(col_cov.sum()), float(row_cov.sum())
    fill = area / max(w * h, 1e-6)
    out["shape"] = "triangle" if fill < 0.68 else ("circle" if fill < 0.89 else "square")
    # Position: centre of the soft bounding box (a triangle's centroid sits low in its box).
    idx = np.arange(img.shape[0], dtype=np.float32) + 0.5
    cx, cy = float(col_cov @ idx) / max(w, 1e-6), float(row_cov @ idx) / max(h, 1e-6)
    pos_names = list(POSITIONS)
    pos_d = [(cx - px) ** 2 + (cy - py) ** 2 for px, py in POSITIONS.values()]
    out["position"] = pos_names[int(np.argmin(pos_d))]
    # Size: half extent from the bounding box (largest side / 2), nearest named size.
    half = max(w, h) / 2
    out["size"] = min(SIZES, key=lambda s: abs(SIZES[s] - half))
    out["fill"] = f"{fill:.2f}"
    return out


# ------------------------------------------------------------------------------- evaluation

ATTRIBUTES = ("colour", "background", "shape", "position", "size")


def eval_scenes(n: int, held_out: bool, seed: int) -> list[Scene]:
    """Evaluation scenes: held-out (or seen) colour-shape pairs, random background, position
    and size, no jitter. Their full captions are the prompts."""
    rng = np.random.default_rng(seed)
    return [random_scene(rng, all_pairs(held_out), jitter=False) for _ in range(n)]


def generate(
    pipe, prompts: list[str], seed: int, steps: int = 30, guidance: float = 7.5, batch: int = 32
) -> np.ndarray:
    """Images for ``prompts`` (uint8 (N, H, W, 3)); image i uses a CPU generator seeded
    ``seed + i``, as txt2img does."""
    import torch

    out = []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator("cpu").manual_seed(seed + j) for j in range(i, i + batch)]
        chunk = prompts[i : i + batch]
        images = pipe(
            chunk,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=gens[: len(chunk)],
            output_type="np",
        ).images
        out.append((np.clip(images, 0, 1) * 255).round().astype(np.uint8))
    return np.concatenate(out)


def score(images: np.ndarray, scenes: list[Scene]) -> dict[str, float]:
    """Fraction of images whose measured attribute equals the scene's, per attribute."""
    hits = dict.fromkeys(ATTRIBUTES, 0)
    for img, scene in zip(images, scenes, strict=True):
        m = measure(img)
        for a in ATTRIBUTES:
            hits[a] += m[a] == getattr(scene, a)
    return {a: hits[a] / len(scenes) for a in ATTRIBUTES}
