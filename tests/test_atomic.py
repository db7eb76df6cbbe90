"""The one way the pack writes files: whole or not at all."""

from __future__ import annotations

import stat

import pytest

from hunyuancustom.atomic import replacing


def test_a_completed_write_replaces_the_target(tmp_path):
    target = tmp_path / "sub" / "video.mp4"
    with replacing(target, suffix=".mp4") as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".") and tmp.suffix == ".mp4"
        assert not target.exists()  # nothing visible under the real name while writing
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["video.mp4"]


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, error):
    target = tmp_path / "api_key"
    target.write_bytes(b"old")
    with pytest.raises(type(error)):
        with replacing(target) as tmp:
            tmp.write_bytes(b"half")
            raise error
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["api_key"]


def test_mode_is_set_before_anything_is_written(tmp_path):
    with replacing(tmp_path / "api_key", mode=0o600) as tmp:
        assert stat.S_IMODE(tmp.stat().st_mode) == 0o600
        tmp.write_bytes(b"sk-x")
    assert stat.S_IMODE((tmp_path / "api_key").stat().st_mode) == 0o600


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_default_mode_follows_the_umask_like_other_outputs(tmp_path, umask, expected):
    # A fresh process per umask: the mode is read from the process, as ComfyUI's own saves get it.
    import subprocess
    import sys
    from pathlib import Path
    script = ("import os, sys; os.umask(int(sys.argv[2], 8)); "
              "from hunyuancustom.atomic import replacing; "
              "t = replacing(sys.argv[1]); p = t.__enter__(); p.write_bytes(b'v'); "
              "t.__exit__(None, None, None)")
    repo = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "v.mp4"), oct(umask)[2:]],
                   check=True, cwd=repo, timeout=60)
    assert stat.S_IMODE((tmp_path / "v.mp4").stat().st_mode) == expected
