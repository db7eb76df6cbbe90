"""Draw the template browser's thumbnail of each example workflow (run once; outputs are committed).

    python tests/make_template_thumbnails.py

ComfyUI's front end (1.27) shows a custom node's example workflow `<name>.json` with the picture
`<name>.jpg` next to it, and `<name>` as its title. Each picture is a frame of what the workflow
makes: its subject (the sample inputs it loads) in the scene its prompt describes, drawn here with no
downloads and no model, like tests/make_mode_samples.py draws the sample inputs.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_mode_samples import OUT, SHIRT, draw_garment, draw_person  # noqa: E402

SIZE = (512, 384)  # 4:3, twice the card's 256 x 192 thumbnail box
REFERENCE = OUT / "hunyuancustom_reference.png"
MARK = 128  # background, while cutting out

# example workflow -> how its picture is drawn (names as in example_workflows/)
CLOUD_REF2V = "HunyuanCustom Ref2V (Cloud)"
CLOUD_BATCH = "HunyuanCustom Ref2V Batch (Cloud)"
VIRTUAL_TRYON = "HunyuanCustom Virtual Try-On (Cloud)"
LOCAL_REF2V = "HunyuanCustom Ref2V (Local)"
SINGING_AVATAR = "HunyuanCustom Singing Avatar (Local)"
SUBJECT_REPLACE = "HunyuanCustom Subject Replace (Local)"


def cut_out(img: Image.Image, seal: int = 0) -> Image.Image:
    """The subject of an image on white as RGBA: the white connected to the corners becomes
    transparent. `seal` (odd, pixels) closes gaps that narrow first, so white inside the subject
    that touches the background only through them (the reference's collar, beside the neck) stays."""
    rgb = img.convert("RGB")
    # a copy: an image made from an array is read-only, and floodfill would silently do nothing
    subject = Image.fromarray(((np.asarray(rgb) < 240).any(axis=-1) * 255).astype(np.uint8)).copy()
    if seal:
        subject = subject.filter(ImageFilter.MaxFilter(seal)).filter(ImageFilter.MinFilter(seal))
    w, h = subject.size
    for corner in ((0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1)):
        ImageDraw.floodfill(subject, corner, MARK)
    mask = Image.fromarray(np.where(np.asarray(subject) == MARK, 0, 255).astype(np.uint8))
    out = rgb.convert("RGBA")
    out.putalpha(mask)
    return out.crop(mask.getbbox())


def paste_subject(canvas: Image.Image, subject: Image.Image, height: int,
                  bottom_centre: tuple[int, int]) -> None:
    scale = height / subject.height
    s = subject.resize((max(1, round(subject.width * scale)), height), Image.LANCZOS)
    x, y = bottom_centre
    canvas.paste(s, (x - s.width // 2, y - s.height), s)


def vertical_gradient(size: tuple[int, int], top: tuple[int, int, int],
                      bottom: tuple[int, int, int]) -> Image.Image:
    w, h = size
    img = Image.new("RGB", size)
    d = ImageDraw.Draw(img)
    for y in range(h):
        t = y / max(1, h - 1)
        d.line([(0, y), (w, y)], fill=tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True)))
    return img


def badge(img: Image.Image, text: str) -> None:
    """Which kind of run it is (cloud or local), in the corner, so look-alike pictures differ."""
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=20)
    left, top, right, bottom = d.textbbox((0, 0), text, font=font)
    w, h = right - left + 20, bottom - top + 12
    d.rounded_rectangle([10, 10, 10 + w, 10 + h], radius=8, fill=(20, 24, 32))
    d.text((20 - left, 16 - top), text, font=font, fill=(240, 240, 240))


def park(size: tuple[int, int]) -> Image.Image:
    w, h = size
    img = vertical_gradient(size, (120, 180, 240), (200, 230, 250))
    d = ImageDraw.Draw(img)
    d.ellipse([w - 90, 24, w - 30, 84], fill=(255, 220, 90))                      # sun
    horizon = int(h * 0.6)
    d.rectangle([0, horizon, w, h], fill=(90, 170, 80))                            # lawn
    d.polygon([(w * 0.42, horizon), (w * 0.58, horizon), (w * 0.85, h), (w * 0.15, h)], fill=(222, 200, 150))
    for tx, r in ((w * 0.12, 42), (w * 0.88, 50)):                                 # trees
        d.rectangle([tx - 6, horizon - 40, tx + 6, horizon + 10], fill=(110, 75, 45))
        d.ellipse([tx - r, horizon - 40 - 2 * r, tx + r, horizon - 30], fill=(50, 130, 60))
    return img


def cafe(size: tuple[int, int]) -> Image.Image:
    w, h = size
    img = vertical_gradient(size, (120, 70, 45), (190, 120, 70))
    d = ImageDraw.Draw(img)
    d.rectangle([w * 0.15, h * 0.1, w * 0.85, h * 0.45], fill=(250, 190, 110))     # evening window
    d.line([(w * 0.5, h * 0.1), (w * 0.5, h * 0.45)], fill=(90, 50, 30), width=4)
    return img


def cafe_table(img: Image.Image) -> None:
    w, h = img.size
    d = ImageDraw.Draw(img)
    d.rectangle([0, h * 0.78, w, h * 0.84], fill=(90, 55, 30))                     # table top
    d.rectangle([w * 0.45, h * 0.84, w * 0.55, h], fill=(70, 42, 24))
    cx, cy = w * 0.72, h * 0.78                                                    # coffee cup
    d.rectangle([cx - 14, cy - 26, cx + 14, cy], fill=(250, 250, 245))
    d.arc([cx + 6, cy - 22, cx + 24, cy - 6], 270, 90, fill=(250, 250, 245), width=4)


def beach(size: tuple[int, int]) -> Image.Image:
    w, h = size
    img = vertical_gradient(size, (250, 140, 90), (255, 210, 150))
    d = ImageDraw.Draw(img)
    horizon = int(h * 0.55)
    d.ellipse([w * 0.5 - 40, horizon - 40, w * 0.5 + 40, horizon + 40], fill=(255, 235, 120))  # sunset
    d.rectangle([0, horizon, w, h * 0.72], fill=(60, 110, 170))                    # sea
    d.rectangle([0, h * 0.72, w, h], fill=(235, 205, 150))                         # sand
    return img


def bicycle(img: Image.Image, cx: float, ground: float, r: float) -> None:
    d = ImageDraw.Draw(img)
    for wx in (cx - 1.5 * r, cx + 1.5 * r):
        d.ellipse([wx - r, ground - 2 * r, wx + r, ground], outline=(30, 30, 30), width=5)
    hub = ground - r
    d.line([(cx - 1.5 * r, hub), (cx, hub - 0.1 * r), (cx + 1.5 * r, hub), (cx + 0.8 * r, hub - 1.2 * r),
            (cx - 0.2 * r, hub - 1.2 * r), (cx, hub - 0.1 * r)], fill=(200, 40, 40), width=5)


def studio(size: tuple[int, int]) -> Image.Image:
    return vertical_gradient(size, (232, 232, 236), (200, 200, 206))


def recording_studio(size: tuple[int, int]) -> Image.Image:
    w, h = size
    img = vertical_gradient(size, (70, 45, 60), (130, 80, 60))
    d = ImageDraw.Draw(img)
    for i in range(0, w, 64):                                                       # foam panels
        for j in range(0, int(h * 0.7), 64):
            if (i // 64 + j // 64) % 2 == 0:
                d.rectangle([i + 4, j + 4, i + 60, j + 60], fill=(85, 55, 70))
    return img


def microphone(img: Image.Image, x: float, y: float) -> None:
    d = ImageDraw.Draw(img)
    d.line([(x, y + 20), (x, img.height)], fill=(40, 40, 40), width=6)
    d.rounded_rectangle([x - 16, y - 34, x + 16, y + 20], radius=16, fill=(60, 60, 66), outline=(20, 20, 20))


def music_notes(img: Image.Image, spots: list[tuple[float, float]]) -> None:
    d = ImageDraw.Draw(img)
    for x, y in spots:
        d.ellipse([x - 10, y - 7, x + 10, y + 7], fill=(255, 230, 150))
        d.line([(x + 9, y), (x + 9, y - 40)], fill=(255, 230, 150), width=4)
        d.line([(x + 9, y - 40), (x + 22, y - 30)], fill=(255, 230, 150), width=4)


def lawn(size: tuple[int, int]) -> Image.Image:
    """The subject-replace sample clip's scene (make_mode_samples.write_source_clip)."""
    w, h = size
    img = Image.new("RGB", size, (135, 190, 235))
    ImageDraw.Draw(img).rectangle([0, int(h * 0.55), w, h], fill=(80, 150, 70))
    return img


def wearing_garment(person: Image.Image, garment: Image.Image) -> Image.Image:
    """The try-on person with the garment's colour and star on the top."""
    red = garment.convert("RGB").getpixel((garment.width // 2, int(garment.height * 0.8)))
    pixels = np.array(person.convert("RGB"))
    pixels[(pixels == SHIRT).all(axis=-1)] = red
    img = Image.fromarray(pixels)
    cx, cy, r = img.width // 2, 170, 22
    star = [(cx + r * math.cos(math.pi / 2 + k * math.pi / 5) * (1 if k % 2 == 0 else 0.45),
             cy - r * math.sin(math.pi / 2 + k * math.pi / 5) * (1 if k % 2 == 0 else 0.45))
            for k in range(10)]
    ImageDraw.Draw(img).polygon(star, fill="white")
    return img


def draw(name: str) -> Image.Image:
    w, h = SIZE
    ref = cut_out(Image.open(REFERENCE), seal=11)
    if name in (CLOUD_REF2V, LOCAL_REF2V):
        img = park(SIZE)
        paste_subject(img, ref, 250, (w // 2 - 30, h - 40))
        badge(img, "Cloud · 720p" if name == CLOUD_REF2V else "Local GPU")
    elif name == CLOUD_BATCH:
        img = Image.new("RGB", SIZE, (20, 24, 32))
        tile_w = (w - 8) // 3
        scenes = [park, cafe, beach]
        for i, scene in enumerate(scenes):
            tile = scene((tile_w, h))
            if scene is cafe:
                paste_subject(tile, ref, 210, (tile_w // 2, int(h * 0.86)))
                cafe_table(tile)
            elif scene is beach:
                bicycle(tile, tile_w / 2, h - 30, 26)
                paste_subject(tile, ref, 170, (tile_w // 2, h - 70))
            else:
                paste_subject(tile, ref, 200, (tile_w // 2, h - 40))
            img.paste(tile, (i * (tile_w + 4), 0))
        badge(img, "Cloud · batch of 3")
    elif name == VIRTUAL_TRYON:
        img = studio(SIZE)
        person = cut_out(wearing_garment(draw_person(), draw_garment()))
        paste_subject(img, person, 330, (w // 2, h - 20))
        badge(img, "Cloud · try-on")
    elif name == SINGING_AVATAR:
        img = recording_studio(SIZE)
        paste_subject(img, ref, 420, (w // 2, h + 90))                              # close-up
        microphone(img, w // 2 + 70, 250)
        music_notes(img, [(90, 120), (410, 90), (440, 200)])
        badge(img, "Local GPU · audio")
    elif name == SUBJECT_REPLACE:
        img = lawn(SIZE)
        paste_subject(img, ref, 230, (w // 2 + 60, int(h * 0.9)))
        badge(img, "Local GPU · editing")
    else:
        raise KeyError(name)
    return img


def main() -> None:
    names = sorted(p.stem for p in OUT.glob("*.json"))
    drawn = {CLOUD_REF2V, CLOUD_BATCH, VIRTUAL_TRYON, LOCAL_REF2V, SINGING_AVATAR, SUBJECT_REPLACE}
    missing = set(names) ^ drawn
    if missing:
        raise SystemExit(f"example workflows and pictures differ: {sorted(missing)}")
    for name in names:
        path = OUT / f"{name}.jpg"
        draw(name).save(path, quality=85, optimize=True)
        print(f"{path.name}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
