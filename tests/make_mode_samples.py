"""Write the small sample inputs of the mode example workflows (run once; outputs are committed).

    python tests/make_mode_samples.py

Everything is drawn or synthesised here (no downloads): a cartoon person and a T-shirt for the
virtual try-on, a short sung melody (WAV) for the singing avatar, and a source clip with the mask
of the region to replace for subject replacement. Each file stays well under 200 KB.
"""

from __future__ import annotations

import math
import sys
import wave
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "example_workflows"
sys.path.insert(0, str(REPO))

SKIN, HAIR, SHIRT, PANTS = (236, 192, 160), (70, 45, 30), (150, 150, 150), (50, 60, 110)


def draw_person(width=256, height=384) -> Image.Image:
    """A front-facing cartoon person on white (grey top, to be replaced by the garment)."""
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    cx = width // 2
    d.ellipse([cx - 34, 18, cx + 34, 96], fill=SKIN, outline=(0, 0, 0))          # head
    d.chord([cx - 36, 12, cx + 36, 70], 180, 360, fill=HAIR)                    # hair
    d.ellipse([cx - 16, 48, cx - 8, 56], fill=(0, 0, 0))                        # eyes
    d.ellipse([cx + 8, 48, cx + 16, 56], fill=(0, 0, 0))
    d.arc([cx - 14, 60, cx + 14, 82], 20, 160, fill=(150, 40, 40), width=3)     # smile
    d.rectangle([cx - 10, 96, cx + 10, 110], fill=SKIN)                          # neck
    d.polygon([(cx - 56, 110), (cx + 56, 110), (cx + 48, 240), (cx - 48, 240)], fill=SHIRT)
    d.polygon([(cx - 56, 110), (cx - 84, 230), (cx - 66, 234), (cx - 44, 140)], fill=SKIN)  # arms
    d.polygon([(cx + 56, 110), (cx + 84, 230), (cx + 66, 234), (cx + 44, 140)], fill=SKIN)
    d.rectangle([cx - 48, 240, cx - 6, 360], fill=PANTS)                         # legs
    d.rectangle([cx + 6, 240, cx + 48, 360], fill=PANTS)
    d.rectangle([cx - 54, 360, cx - 4, 374], fill=(30, 30, 30))                  # shoes
    d.rectangle([cx + 4, 360, cx + 54, 374], fill=(30, 30, 30))
    return img


def draw_garment(size=256) -> Image.Image:
    """A red T-shirt with a white star, laid flat on white."""
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    s = size / 256
    pts = [(88, 30), (168, 30), (236, 70), (212, 118), (184, 100), (184, 230), (72, 230), (72, 100),
           (44, 118), (20, 70)]
    d.polygon([(x * s, y * s) for x, y in pts], fill=(200, 30, 40), outline=(90, 10, 15))
    d.arc([104 * s, 18 * s, 152 * s, 50 * s], 0, 180, fill=(90, 10, 15), width=3)
    star = [(128 + 34 * math.cos(math.pi / 2 + k * math.pi / 5) * (1 if k % 2 == 0 else 0.45),
             140 - 34 * math.sin(math.pi / 2 + k * math.pi / 5) * (1 if k % 2 == 0 else 0.45))
            for k in range(10)]
    d.polygon([(x * s, y * s) for x, y in star], fill="white")
    return img


def write_melody(path: Path, seconds=2.0, rate=16000) -> None:
    """A short sung-like melody (vibrato, harmonics, syllable envelope) as 16-bit mono WAV."""
    t = np.arange(int(seconds * rate)) / rate
    notes = [261.6, 293.7, 329.6, 349.2, 392.0, 349.2, 329.6, 293.7]
    per = seconds / len(notes)
    f = np.array([notes[min(len(notes) - 1, int(x / per))] for x in t])
    f = f * (1 + 0.01 * np.sin(2 * np.pi * 5.5 * t))                   # vibrato
    phase = 2 * np.pi * np.cumsum(f) / rate
    voice = sum(a * np.sin(k * phase) for k, a in ((1, 1.0), (2, 0.5), (3, 0.25), (4, 0.12)))
    env = np.sin(np.pi * ((t % per) / per)) ** 0.5                        # one syllable per note
    pcm = (0.3 * voice / 1.87 * env * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def write_source_clip(video: Path, mask: Path, frames=25, width=256, height=160, fps=25) -> None:
    """A clip of a blue ball rolling across a green lawn, and the mask of the ball's whole path."""
    import imageio.v2 as imageio_v2

    writer = imageio_v2.get_writer(str(video), format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                   pixelformat="yuv420p", macro_block_size=1, ffmpeg_log_level="error",
                                   output_params=["-crf", "30"])
    r, y = 26, height * 0.62
    try:
        for i in range(frames):
            img = Image.new("RGB", (width, height), (135, 190, 235))
            d = ImageDraw.Draw(img)
            d.rectangle([0, int(height * 0.55), width, height], fill=(80, 150, 70))
            x = 40 + (width - 80) * i / max(1, frames - 1)
            d.ellipse([x - r, y - r, x + r, y + r], fill=(40, 70, 200))
            writer.append_data(np.asarray(img))
    finally:
        writer.close()
    m = Image.new("L", (width, height), 0)
    ImageDraw.Draw(m).rounded_rectangle([40 - r - 4, y - r - 4, width - 40 + r + 4, y + r + 4],
                                        radius=r, fill=255)
    m.save(mask, optimize=True)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    draw_person().save(OUT / "hunyuancustom_tryon_person.png", optimize=True)
    draw_garment().save(OUT / "hunyuancustom_tryon_garment.png", optimize=True)
    write_melody(OUT / "hunyuancustom_singing.wav")
    write_source_clip(OUT / "hunyuancustom_source.mp4", OUT / "hunyuancustom_source_mask.png")
    for p in sorted(OUT.glob("hunyuancustom_*")):
        if p.suffix != ".json":
            print(f"{p.name}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
