"""Template thumbnails (example_workflows/<template>.jpg) and the pack's registry icon, drawn here with PIL and
numpy from the templates' own input paintings and simple shapes and text (nothing is downloaded).

Each thumbnail is a small diagram of what its template does: what goes in (a painting, a prompt, a reference
image), the pack's node, and a sketch of what comes out. The "results" are procedural sketches (the painting
with texture and light), not model outputs.
Used by scripts/build_workflows.py.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

SIZE = 400
BACKGROUND = (32, 34, 40)
INK = (235, 235, 240)
MUTED = (150, 155, 170)
ACCENT = (120, 190, 255)


def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def canvas(title: str, subtitle: str = "") -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.text((SIZE / 2, 34), title, fill=INK, font=font(24), anchor="mm")
    if subtitle:
        draw.text((SIZE / 2, 62), subtitle, fill=MUTED, font=font(15), anchor="mm")
    return image, draw


def texture(shape: tuple[int, int], seed: int, scales=(4, 8, 16, 32)) -> np.ndarray:
    """Multi-scale value noise in [-1, 1], (h, w)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    out = np.zeros(shape, np.float32)
    for i, cells in enumerate(scales):
        small = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
        layer = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))
        out += layer / (i + 1)
    return out / np.abs(out).max()


def realise(painting: Image.Image, amount: float, seed: int = 0, tint=(0, 0, 0)) -> Image.Image:
    """A sketch of a realistic result from a flat painting: softened edges, texture and light ``amount`` in [0, 1],
    shifted towards ``tint`` (an RGB offset)."""
    image = painting.convert("RGB").filter(ImageFilter.GaussianBlur(2 + 6 * amount))
    array = np.asarray(image, np.float32)
    h, w = array.shape[:2]
    grain = texture((h, w), seed)[..., None] * 60 * amount
    light = np.linspace(1.15, 0.8, h, dtype=np.float32)[:, None, None] ** amount
    array = (array + grain) * light + np.asarray(tint, np.float32)
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


def paste(image: Image.Image, picture: Image.Image, box, label: str = "", frame=INK) -> None:
    left, top, right, bottom = box
    picture = picture.convert("RGB").resize((right - left, bottom - top), Image.LANCZOS)
    image.paste(picture, (left, top))
    draw = ImageDraw.Draw(image)
    draw.rectangle(box, outline=frame, width=2)
    if label:
        draw.text(((left + right) / 2, bottom + 13), label, fill=INK, font=font(15), anchor="mm")


def arrow(draw: ImageDraw.ImageDraw, start, end, label: str = "", colour=ACCENT) -> None:
    draw.line([start, end], fill=colour, width=4)
    direction = np.subtract(end, start).astype(float)
    direction /= np.linalg.norm(direction)
    normal = np.array([-direction[1], direction[0]])
    tip = np.asarray(end, float)
    head = [tuple(tip), tuple(tip - 14 * direction + 8 * normal), tuple(tip - 14 * direction - 8 * normal)]
    draw.polygon(head, fill=colour)
    if label:
        middle = (np.asarray(start) + np.asarray(end)) / 2 - 18 * normal
        draw.text((middle[0], middle[1]), label, fill=colour, font=font(15), anchor="mm")


def node_box(draw: ImageDraw.ImageDraw, box, label: str) -> None:
    draw.rounded_rectangle(box, radius=8, fill=(55, 60, 72), outline=ACCENT, width=2)
    draw.text(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), label, fill=INK, font=font(15), anchor="mm")


def words_on(painting: Image.Image, labels: list[tuple[float, float, str]]) -> Image.Image:
    """The painting with words written on its colour regions (x, y as fractions of the size)."""
    out = painting.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    w, h = out.size
    for x, y, word in labels:
        draw.text((x * w, y * h), word, fill=(255, 255, 255), font=font(int(w / 11)), anchor="mm",
                  stroke_width=max(2, w // 120), stroke_fill=(0, 0, 0))
    return out


REGION_WORDS = [(0.28, 0.16, "sky"), (0.78, 0.36, "sun"), (0.32, 0.5, "mountains"), (0.5, 0.69, "lake"),
                (0.5, 0.88, "meadow")]


# ----------------------------------------------------------------------------------------------------------
# One diagram per template


def sdedit_sweep(painting: Image.Image) -> Image.Image:
    image, draw = canvas("SDEdit strength sweep", "one painting, three noise levels")
    paste(image, painting, (20, 150, 150, 280), "painting")
    arrow(draw, (158, 215), (205, 215))
    for i, strength in enumerate((0.3, 0.5, 0.7)):
        top = 86 + i * 104
        paste(image, realise(painting, strength, seed=i), (215, top, 300, top + 85))
        draw.text((310, top + 42), f"t0 {strength}", fill=INK, font=font(16), anchor="lm")
    return image


def sdedit_sigmas(painting: Image.Image) -> Image.Image:
    image, draw = canvas("SDEdit Sigmas", "in SamplerCustom")
    paste(image, painting, (20, 110, 150, 240), "painting")
    node_box(draw, (175, 110, 380, 150), "SDEdit Sigmas")
    node_box(draw, (175, 190, 380, 230), "SamplerCustom")
    arrow(draw, (278, 152), (278, 186))
    arrow(draw, (150, 250), (205, 295))
    paste(image, realise(painting, 0.5, seed=3), (215, 250, 345, 380))
    return image


def gradop_strokes(painting: Image.Image) -> Image.Image:
    image, draw = canvas("GradOP+ strokes to photo", "beside SDEdit from the same noise")
    paste(image, painting, (20, 150, 150, 280), "strokes")
    arrow(draw, (158, 190), (225, 140), "GradOP+")
    arrow(draw, (158, 240), (225, 290), "SDEdit")
    paste(image, realise(painting, 1.0, seed=4), (235, 80, 375, 200), "realistic", frame=ACCENT)
    paste(image, realise(painting, 0.25, seed=5), (235, 240, 375, 360), "flat")
    return image


def gradop_sampler_regions(painting: Image.Image) -> Image.Image:
    image, draw = canvas("GradOP+ Sampler", "with region words, in SamplerCustomAdvanced")
    paste(image, words_on(painting, REGION_WORDS), (15, 120, 175, 280), "words on regions")
    node_box(draw, (190, 180, 260, 220), "CFG")
    arrow(draw, (262, 200), (280, 200))
    paste(image, realise(painting, 0.9, seed=6, tint=(10, 0, -10)), (285, 140, 390, 260))
    return image


def regions_words(painting: Image.Image) -> Image.Image:
    image, draw = canvas("Region words on a painting", "into KSampler, SDEdit and GradOP+")
    paste(image, words_on(painting, REGION_WORDS), (15, 140, 185, 310), "regions to words")
    for i, (name, amount) in enumerate((("txt2img", 0.9), ("SDEdit", 0.5), ("GradOP+", 1.0))):
        top = 86 + i * 104
        arrow(draw, (192, 225), (250, top + 40))
        paste(image, realise(painting, amount, seed=10 + i), (255, top, 330, top + 80))
        draw.text((337, top + 40), name, fill=INK, font=font(14), anchor="lm")
    return image


def stroke_canvas(painting: Image.Image) -> Image.Image:
    image, draw = canvas("Stroke Canvas into SDEdit", "paint in the node, get a photo")
    background = Image.new("RGBA", painting.size, (255, 255, 255, 255))
    flat = Image.alpha_composite(background, painting.convert("RGBA")).convert("RGB")
    paste(image, flat, (20, 120, 190, 290), "painted in the node")
    draw.line([(150, 110), (185, 80)], fill=(240, 200, 120), width=7)  # a brush
    draw.ellipse([144, 104, 158, 118], fill=(224, 60, 49))
    arrow(draw, (198, 205), (232, 205))
    paste(image, realise(flat, 0.7, seed=20), (240, 120, 385, 290), "SDEdit result", frame=ACCENT)
    return image


def semantic(kind: str):
    def make(painting: Image.Image) -> Image.Image:
        subtitle = {"text": "steered by a text", "content": "steered by an image's content",
                    "style": "steered by an image's style"}[kind]
        image, draw = canvas("CLIP semantic guidance", subtitle)
        if kind == "text":
            draw.rounded_rectangle((15, 130, 170, 270), radius=8, fill=(245, 240, 225), outline=INK, width=2)
            for i, line in enumerate(("\"an oil painting", "in warm autumn", "colours\"")):
                draw.text((92, 170 + i * 26), line, fill=(60, 40, 20), font=font(16), anchor="mm")
            guided = realise(painting, 0.6, seed=30, tint=(55, 10, -45))
        elif kind == "content":
            paste(image, painting, (15, 130, 170, 285), "reference")
            guided = realise(painting, 0.8, seed=31)
        else:
            swatches = [(110, 170, 235), (250, 210, 80), (95, 90, 120), (40, 100, 170), (70, 150, 60)]
            paste(image, painting, (15, 110, 170, 250), "reference")
            for i, colour in enumerate(swatches):
                draw.rectangle((15 + i * 31, 275, 43 + i * 31, 300), fill=colour, outline=INK)
            tinted = Image.new("RGB", painting.size, (120, 140, 160))
            guided = Image.blend(realise(painting.transpose(Image.FLIP_LEFT_RIGHT), 0.9, seed=32), tinted, 0.25)
        arrow(draw, (178, 205), (228, 150), "CLIP")
        paste(image, guided, (235, 80, 375, 200), "guided", frame=ACCENT)
        unguided = realise(Image.new("RGB", painting.size, (90, 120, 150)).rotate(0), 0.3, seed=33)
        ImageDraw.Draw(unguided).polygon([(0, 300), (250, 180), (512, 320), (512, 512), (0, 512)], fill=(80, 90, 85))
        paste(image, realise(unguided, 0.6, seed=34), (235, 240, 375, 360), "unguided")
        return image
    return make


def _ridge(width: int, height: int, seed: int, base: float, amplitude: float) -> np.ndarray:
    line = texture((1, width), seed, scales=(6, 12, 24, 48))[0]
    return (base + amplitude * line) * height


def panorama_strip(width: int, height: int, loop: bool) -> Image.Image:
    """A procedural panorama: a dusk city skyline by a river (wide) or snowy mountains (360)."""
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    if loop:
        sky = (1 - y) * np.array([90, 150, 230], np.float32) + y * np.array([200, 225, 250], np.float32)
    else:
        sky = (1 - y) * np.array([60, 50, 120], np.float32) + y * np.array([250, 150, 90], np.float32)
    array = np.broadcast_to(sky, (height, width, 3)).copy()
    rows = np.arange(height)[:, None]
    ridge = _ridge(width, height, 7 if loop else 8, 0.5 if loop else 0.62, 0.18 if loop else 0.05)
    below = rows > ridge[None, :]
    array[below] = (np.array([235, 240, 250]) if loop else np.array([45, 40, 70]))
    if loop:
        snowline = rows > ridge[None, :] + 0.12 * height
        array[snowline] = np.array([110, 120, 140])
    else:
        rng = np.random.default_rng(9)
        x = 0
        while x < width:
            w = int(rng.integers(8, 20))
            top = int(height * rng.uniform(0.3, 0.6))
            array[top:int(height * 0.75), x:x + w] = rng.integers(25, 60, 3)
            x += w + int(rng.integers(0, 4))
        array[int(height * 0.75):] = np.array([40, 60, 110])
    return realise(Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)), 0.3, seed=40)


def panorama_wide(_painting=None) -> Image.Image:
    image, draw = canvas("SyncDiffusion panorama", "512 x 2048, windows kept in sync")
    strip = panorama_strip(1024, 256, loop=False)
    paste(image, strip, (10, 150, 390, 245), "one coherent wide image")
    for i, left in enumerate(range(10, 300, 45)):  # overlapping windows, the anchor highlighted
        colour = ACCENT if i == 3 else (255, 255, 255)
        draw.rectangle((left, 140 + (i % 2) * 4, left + 95, 255 - (i % 2) * 4), outline=colour, width=2)
    draw.text((SIZE / 2, 310), "windows pulled to the anchor", fill=ACCENT, font=font(15), anchor="mm")
    return image


def panorama_360(_painting=None) -> Image.Image:
    image, draw = canvas("SyncDiffusion 360 panorama", "a loop whose ends meet")
    strip = panorama_strip(1024, 256, loop=True)
    paste(image, strip, (10, 95, 390, 190))
    ring = strip.resize((360, 90))
    # the same strip wrapped around a cylinder, seen from above at an angle
    centre, radius = (200, 300), (150, 60)
    dark = Image.eval(ring, lambda v: v // 2)
    for front in (False, True):  # the far side (darker) first, then the near side over it
        for step in range(720):
            angle = np.deg2rad(step / 2)
            if (np.cos(angle) >= 0) != front:
                continue
            x = centre[0] + radius[0] * np.sin(angle)
            y = centre[1] + radius[1] * np.cos(angle)
            column = step // 2
            piece = (ring if front else dark).crop((column, 0, column + 1, 90)).resize((3, 54))
            image.paste(piece, (int(x), int(y - 40)))
    draw.ellipse((centre[0] - radius[0], centre[1] - radius[1] - 40, centre[0] + radius[0],
                  centre[1] + radius[1] - 40), outline=ACCENT, width=2)
    draw.text((centre[0], centre[1] - 45), "360°", fill=INK, font=font(22), anchor="mm")
    return image


FLUX_TINT = (25, 5, -30)  # the Flux diagrams' results: warmer light


def _flux_badge(draw: ImageDraw.ImageDraw) -> None:
    draw.rounded_rectangle((120, 362, 280, 392), radius=8, fill=(70, 45, 95), outline=ACCENT, width=2)
    draw.text((200, 377), "Flux.1 dev, cfg 1", fill=INK, font=font(15), anchor="mm")


def flux_sdedit(painting: Image.Image) -> Image.Image:
    image, draw = canvas("SDEdit on Flux.1 dev", "a painting to a photo")
    paste(image, painting, (15, 100, 175, 260), "painting")
    arrow(draw, (182, 180), (218, 180))
    paste(image, realise(painting, 0.7, seed=50, tint=FLUX_TINT), (225, 90, 390, 255), "t0 0.7", frame=ACCENT)
    _flux_badge(draw)
    return image


def flux_gradop(painting: Image.Image) -> Image.Image:
    image, draw = canvas("GradOP+ on Flux.1 dev", "strokes followed through TAEF1")
    paste(image, painting, (15, 90, 135, 210), "strokes")
    node_box(draw, (20, 285, 130, 325), "TAEF1")
    arrow(draw, (75, 281), (75, 240))
    arrow(draw, (142, 170), (190, 170))
    paste(image, realise(painting, 1.0, seed=51, tint=FLUX_TINT), (200, 90, 390, 280), "1024 x 1024", frame=ACCENT)
    _flux_badge(draw)
    return image


def flux_regions(painting: Image.Image) -> Image.Image:
    image, draw = canvas("Region words on Flux.1 dev", "each colour named, on joint attention")
    paste(image, words_on(painting, REGION_WORDS), (15, 110, 185, 280), "regions to words")
    for i, (name, amount) in enumerate((("txt2img", 0.9), ("SDEdit", 0.6))):
        top = 95 + i * 110
        arrow(draw, (192, 195), (250, top + 45))
        paste(image, realise(painting, amount, seed=53 + i, tint=FLUX_TINT), (255, top, 340, top + 90))
        draw.text((347, top + 45), name, fill=INK, font=font(14), anchor="lm")
    _flux_badge(draw)
    return image


def flux_semantic(painting: Image.Image) -> Image.Image:
    image, draw = canvas("CLIP guidance on Flux.1 dev", "steered by a text")
    draw.rounded_rectangle((15, 110, 175, 230), radius=8, fill=(245, 240, 225), outline=INK, width=2)
    for i, line in enumerate(("\"an oil painting", "in warm autumn", "colours\"")):
        draw.text((95, 145 + i * 26), line, fill=(60, 40, 20), font=font(16), anchor="mm")
    arrow(draw, (182, 170), (225, 170), "CLIP")
    guided = realise(painting.transpose(Image.FLIP_TOP_BOTTOM), 0.8, seed=52, tint=(70, 20, -60))
    paste(image, guided, (230, 95, 390, 255), "guided", frame=ACCENT)
    node_box(draw, (20, 260, 170, 300), "TAEF1 decode")
    _flux_badge(draw)
    return image


def flux_panorama(_painting=None) -> Image.Image:
    image, draw = canvas("SyncDiffusion on Flux.1 dev", "1024 x 3072, 1024 px windows")
    strip = realise(panorama_strip(768, 256, loop=False), 0.4, seed=53, tint=FLUX_TINT)
    paste(image, strip, (10, 120, 390, 247), "one coherent wide image")
    for i, left in enumerate((10, 73, 136, 199, 262)):  # five windows, half a window apart
        colour = ACCENT if i == 2 else (255, 255, 255)
        draw.rectangle((left, 114 + (i % 2) * 5, left + 127, 253 - (i % 2) * 5), outline=colour, width=2)
    _flux_badge(draw)
    return image


def icon() -> Image.Image:
    """The registry icon (400 x 400): a stroke painting turning into a photo."""
    from workflow_builder import stroke_painting

    painting = stroke_painting(200)
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    paste(image, painting, (30, 60, 210, 240))
    paste(image, realise(painting, 1.0, seed=50), (190, 160, 370, 340), frame=ACCENT)
    draw.text((SIZE / 2, 30), "Guided Synthesis", fill=INK, font=font(30), anchor="mm")
    return image
