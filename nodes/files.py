"""Where the nodes put the videos they save or preview."""

from __future__ import annotations

from pathlib import Path

import folder_paths
from comfy_api.latest import io, ui

from ..hunyuancustom.atomic import replacing
from ..hunyuancustom.config import data_dir

SUBFOLDER = "hunyuancustom"


def numbered_mp4(prefix: str, folder: io.FolderType = io.FolderType.output) -> tuple[Path, str, str]:
    """A fresh numbered MP4 path in ComfyUI's output (or temp) folder: (path, filename, subfolder)."""
    base = folder_paths.get_output_directory() if folder == io.FolderType.output \
        else folder_paths.get_temp_directory()
    full_dir, name, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, base)
    filename = f"{name}_{counter:05}_.mp4"
    return Path(full_dir) / filename, filename, subfolder


def output_relative(filename: str, subfolder: str) -> str:
    """A saved file's path inside ComfyUI's output folder, as the node reports it."""
    return f"{subfolder}/{filename}" if subfolder else filename


def portable(text: str) -> str:
    """`text` with the server's own folders named, not spelled out: for JSON a user may share
    (errors and journal warnings can name the video's path or the journal file)."""
    folders = {folder_paths.get_output_directory(): "[output folder]",
               str(data_dir()): "[HunyuanCustom data folder]"}
    for folder, label in sorted(folders.items(), key=lambda kv: -len(kv[0])):
        for spelling in {folder, str(Path(folder).resolve())}:
            text = text.replace(spelling, label)
    return text


def preview_video(video, prefix: str) -> ui.PreviewVideo:
    """Save `video` (a core VIDEO) as a temp MP4 and return the node's preview of it. Written under a
    temporary name and renamed, so the browser never fetches a half-written file."""
    path, filename, subfolder = numbered_mp4(prefix, io.FolderType.temp)
    with replacing(path, suffix=".mp4") as tmp:  # the extension tells PyAV the container
        video.save_to(str(tmp))
    return ui.PreviewVideo([ui.SavedResult(filename, subfolder, io.FolderType.temp)])
