"""Cloud result path: "task completed" -> IMAGE tensor, beside core's PyAV way; and polling cost.

    python benchmarks/decode_and_poll.py [--frames 129] [--size 1280x720] [--content both]
                                         [--skip-polling]

Part 1 serves a real 129-frame 1280x720 H.264 MP4 from the loopback API server and measures, in a
fresh subprocess each (so peak RSS is that method's alone):
  ours:  download (streamed, atomic) + probe + decode into one preallocated float32 tensor;
  core:  the same download, then PyAV decode as core's VideoFromFile.get_components does it
         (the real class when COMFYUI_PATH is set, else the same steps written out).
Then, on the same file, the cloud node's whole job (run_ref2v with the journal: upload, submit,
poll, download, and the VIDEO output) with its `frames` output used (decoded) and unused (not
decoded), each in a fresh process: peak extra memory, and what the result still holds afterwards
(what ComfyUI keeps for as long as it caches the node's output).
Part 2 runs tasks of known duration on the loopback server and measures how late each poller
notices completion and how many requests it makes: our schedule vs core's fixed 5 s interval.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hunyuancustom.client import ClientOptions, PollSchedule, WaveSpeedClient  # noqa: E402
from hunyuancustom.config import ApiKey  # noqa: E402
from hunyuancustom.testing.fake_api import FakeWaveSpeed, Scenario  # noqa: E402
from hunyuancustom.testing.media import make_test_video  # noqa: E402

KEY = "bench-key"


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def core_decode(path: str):
    """Core's way: the real VideoFromFile if ComfyUI is importable, else the same steps."""
    comfy = os.environ.get("COMFYUI_PATH")
    if comfy:
        sys.path.insert(0, comfy)
        from comfy_api.latest import InputImpl

        comps = InputImpl.VideoFromFile(path).get_components()
        return comps.images, float(comps.frame_rate), "comfy_api VideoFromFile"
    import av
    import torch

    with av.open(path) as container:
        frames = [torch.from_numpy(f.to_ndarray(format="rgb24")) / 255.0 for f in container.decode(video=0)]
        images = torch.stack(frames)
        fps = float(container.streams.video[0].average_rate)
    return images, fps, "PyAV, VideoFromFile's steps"


def child(method: str, url: str, out_dir: str) -> None:
    """One measurement in this fresh process; prints a JSON line."""
    import torch  # noqa: F401  (imported before the baseline, as ComfyUI would have it)

    from hunyuancustom.video import decode_frames

    client = WaveSpeedClient(ApiKey(KEY, "bench"), "http://127.0.0.1:1/api/v2")
    dest = Path(out_dir) / f"{method}.mp4"
    base = rss_mb()
    t0 = time.perf_counter()
    info = client.download(url, dest, max_bytes=8 << 30)
    t_dl = time.perf_counter() - t0
    if method == "ours":
        frames, fps = decode_frames(dest, info)
        how = "imageio-ffmpeg into a preallocated tensor"
    else:
        frames, fps, how = core_decode(str(dest))
    total = time.perf_counter() - t0
    tensor_mb = frames.numel() * frames.element_size() / 2**20
    print(json.dumps({"method": method, "how": how, "download_s": t_dl, "total_s": total,
                      "decode_s": total - t_dl, "frames": list(frames.shape), "fps": fps,
                      "tensor_mb": tensor_mb, "peak_extra_mb": peak_mb() - base}))


def node_child(frames_used: str, api_base: str, out_dir: str) -> None:
    """The cloud node's job in this fresh process, frames decoded or not; prints a JSON line."""
    import torch  # noqa: F401  (imported before the baseline, as ComfyUI would have it)

    from hunyuancustom.config import Settings
    from hunyuancustom.journal import Journal
    from hunyuancustom.params import REF2V_720P
    from hunyuancustom.ref2v import ImageInput, run_ref2v
    from hunyuancustom.testing.media import make_test_image, png_bytes

    video_type = None
    if os.environ.get("COMFYUI_PATH"):
        sys.path.insert(0, os.environ["COMFYUI_PATH"])
        from comfy_api.latest import InputImpl

        video_type = InputImpl.VideoFromFile
    decode = frames_used == "used"
    image = ImageInput(png=png_bytes(make_test_image(None, 64, 48)))
    dest = Path(out_dir) / f"node_{frames_used}.mp4"
    base = rss_mb()
    t0 = time.perf_counter()
    with Journal(Path(out_dir) / f"jobs_{frames_used}.sqlite3") as journal:
        result = run_ref2v(REF2V_720P, image, {"prompt": "bench", "seed": -1}, dest, decode=decode,
                           settings=Settings(api_base=api_base), api_key=ApiKey(KEY, "bench"),
                           journal=journal)
    # The node's outputs as ComfyUI holds them: the VIDEO (a file reference) and the frames or None.
    outputs = (video_type(str(dest)) if video_type else str(dest), result.frames)
    total = time.perf_counter() - t0
    frames = outputs[1]
    print(json.dumps({"frames_used": frames_used, "total_s": total,
                      "frames": list(frames.shape) if frames is not None else None,
                      "peak_extra_mb": peak_mb() - base, "held_extra_mb": rss_mb() - base,
                      "video": type(outputs[0]).__name__}))


def node_outputs(api: FakeWaveSpeed, tmp: str, repeats: int) -> None:
    """Side by side: the cloud node's job with `frames` unused and used."""
    rows = []
    for _ in range(repeats):
        for used in ("unused", "used"):  # interleaved so both see the same machine state
            out = subprocess.run([sys.executable, __file__, "--node-child", used, api.base_url, tmp],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"\ncloud node job (upload, submit, poll, download; {repeats} runs each, best time, worst "
          "memory)")
    print(f"{'frames output':14} {'total s':>8} {'peak extra MiB':>15} {'held after MiB':>15}  outputs")
    for used in ("unused", "used"):
        rs = [x for x in rows if x["frames_used"] == used]
        what = f"VIDEO ({rs[0]['video']}) + " + (f"frames {rs[0]['frames']} float32" if rs[0]["frames"]
                                                  else "no frames (None)")
        print(f"{used:14} {min(x['total_s'] for x in rs):8.2f} "
              f"{max(x['peak_extra_mb'] for x in rs):15.0f} {max(x['held_extra_mb'] for x in rs):15.0f}"
              f"  {what}")


def make_textured_video(path: Path, frames: int, width: int, height: int) -> None:
    """Film-like content: a random texture panning a few pixels a frame plus fresh grain in every
    frame, so the encoder spends a realistic bitrate (the flat test pattern, or a pure pan, compresses
    to almost nothing)."""
    import imageio.v2 as imageio
    import numpy as np

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (height // 4, (width + 4 * frames) // 4 + 1, 3), dtype=np.uint8)
    base = base.repeat(4, axis=0).repeat(4, axis=1)  # 4x4 grain: detail without pure noise
    writer = imageio.get_writer(str(path), format="FFMPEG", mode="I", fps=25, codec="libx264",
                                pixelformat="yuv420p", macro_block_size=1, ffmpeg_log_level="error",
                                output_params=["-crf", "20"])
    try:
        for i in range(frames):
            frame = base[:height, 4 * i : 4 * i + width].astype(np.int16)
            frame += rng.integers(-16, 17, frame.shape, dtype=np.int16)
            writer.append_data(frame.clip(0, 255).astype(np.uint8))
    finally:
        writer.close()


def part1(frames: int, width: int, height: int, repeats: int, textured: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "result.mp4"
        t = time.perf_counter()
        if textured:
            make_textured_video(video, frames, width, height)
        else:
            make_test_video(video, frames=frames, width=width, height=height, fps=25)
        print(f"test video ({'textured' if textured else 'flat pattern'}): {frames} frames "
              f"{width}x{height} H.264, "
              f"{video.stat().st_size / 2**20:.1f} MiB (made in {time.perf_counter() - t:.1f} s)")
        with FakeWaveSpeed(Scenario(api_key=KEY, video_path=str(video))) as api:
            client = WaveSpeedClient(ApiKey(KEY, "bench"), api.base_url)
            task = client.submit("wavespeed-ai/hunyuan-custom-ref2v-720p",
                                 {"image": "https://x.test/a.png", "prompt": "bench"})
            url = client.wait(task.id, timeout_s=60).outputs[0]
            rows = []
            for _ in range(repeats):
                for method in ("ours", "core"):  # interleaved so both see the same machine state
                    out = subprocess.run([sys.executable, __file__, "--child", method, url, tmp],
                                         capture_output=True, text=True, check=True)
                    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"\n'task completed' -> IMAGE tensor ready ({repeats} runs each, best time, worst peak)")
        print(f"{'method':6} {'total s':>8} {'decode s':>9} {'peak extra MiB':>15} {'x tensor':>9}  how")
        summary = {}
        for method in ("ours", "core"):
            rs = [x for x in rows if x["method"] == method]
            best = min(x["total_s"] for x in rs)
            dec = min(x["decode_s"] for x in rs)
            peak = max(x["peak_extra_mb"] for x in rs)
            ratio = peak / rs[0]["tensor_mb"]
            summary[method] = (best, peak)
            print(f"{method:6} {best:8.2f} {dec:9.2f} {peak:15.0f} {ratio:9.2f}  {rs[0]['how']}")
        print(f"frames tensor: {rows[0]['frames']} float32 = {rows[0]['tensor_mb']:.0f} MiB")
        print(f"speed: ours/core = {summary['ours'][0] / summary['core'][0]:.2f} (<= 1.0 is the target); "
              f"memory: ours/core = {summary['ours'][1] / summary['core'][1]:.2f}")
        with FakeWaveSpeed(Scenario(api_key=KEY, video_path=str(video))) as api:
            node_outputs(api, tmp, repeats)


def part2() -> None:
    durations = [1.3, 2.1, 3.4, 4.6, 5.9, 7.2, 8.5, 9.8]

    def measure(schedule: PollSchedule, label: str):
        results = []
        with FakeWaveSpeed(Scenario(api_key=KEY, task_seconds=0)) as api:
            def one(duration):
                api.set_scenario(Scenario(api_key=KEY, task_seconds=duration))
                client = WaveSpeedClient(ApiKey(KEY, "b"), api.base_url,
                                         options=ClientOptions(schedule=schedule))
                task = client.submit("wavespeed-ai/hunyuan-custom-ref2v-720p",
                                     {"image": "https://x.test/a.png", "prompt": "bench"})
                submitted = time.monotonic()
                before = client.requests_made
                client.wait(task.id, timeout_s=120)
                late = time.monotonic() - submitted - duration
                results.append((duration, late, client.requests_made - before))
            for d in durations:  # one at a time: the scenario's task length applies per submit
                one(d)
        lat = [r[1] for r in results]
        reqs = [r[2] for r in results]
        print(f"{label:28} mean late {sum(lat) / len(lat):5.2f} s  max late {max(lat):5.2f} s  "
              f"requests/task {sum(reqs) / len(reqs):5.1f}  (max rate {1 / schedule.initial_s:.1f}/s)")

    print(f"\npolling, measured on loopback: tasks of {durations} s")
    measure(PollSchedule(), "ours (1 s, slowing to 2 s)")
    measure(PollSchedule(initial_s=5.0, max_interval_s=5.0), "core API nodes (fixed 5 s)")

    print("\npolling, long tasks (from each schedule; detection delay averaged over end times)")
    for seconds in (60, 150, 300, 600):
        for label, sched in (("ours", PollSchedule()), ("core 5 s", PollSchedule(5.0, 5.0))):
            t, n, polls = 0.0, 0, []
            while t < seconds + 10:
                polls.append(t)
                t += sched.interval(t)
                n += 1
            gaps = [b - a for a, b in zip(polls, polls[1:], strict=False) if b > seconds - 10]
            mean_late = sum(g * g / 2 for g in gaps) / sum(gaps)
            reqs = sum(1 for p in polls if p <= seconds) + 1
            print(f"  {seconds:4d} s task  {label:9} mean late {mean_late:4.2f} s  requests {reqs:4d}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:5])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--node-child":
        node_child(*sys.argv[2:5])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=129)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--skip-polling", action="store_true")
    ap.add_argument("--content", choices=("flat", "textured", "both"), default="both",
                    help="flat test pattern (tiny file) and/or textured film-like content")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    for content in (("flat", "textured") if args.content == "both" else (args.content,)):
        part1(args.frames, width, height, args.repeats, textured=content == "textured")
    if not args.skip_polling:
        part2()


if __name__ == "__main__":
    main()
