from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pytest

from render.media.atomic import temp_path_for
from render.media.publish import (
    OutputVerifyError,
    atomic_output,
    publish_atomically,
    verify_video,
)
from render.media.video import AudioTrack, Mp4Writer

H, W = 64, 64


def _frames(n: int) -> np.ndarray:
    y, x = np.mgrid[0:H, 0:W]
    out = np.zeros((n, H, W, 3), np.uint8)
    for i in range(n):
        out[i, ..., 0] = (x * 3 + i * 2) % 256
        out[i, ..., 1] = (y * 3 + i) % 256
    return out


def _write_video(path: Path, n_frames: int, fps: int = 16, audio_s: float | None = None) -> None:
    with Mp4Writer(path, W, H, fps=fps) as w:
        w.write(_frames(n_frames))
        audio = None
        if audio_s is not None:
            audio = AudioTrack(np.zeros(round(audio_s * 16000), np.float32), 16000)
        w.close(audio=audio)


def _hidden(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def _fail(path: Path) -> None:
    raise OutputVerifyError(f"{path}: rejected by test")


# ---------------------------------------------------------------- temp_path_for


def test_temp_path_for(tmp_path: Path) -> None:
    final = tmp_path / "shot_001.mp4"
    a, b = temp_path_for(final), temp_path_for(final)
    assert a != b  # random suffix
    assert a.parent == final.parent and a.name.startswith(".") and a.suffix == ".mp4"
    assert str(os.getpid()) in a.name and "shot_001" in a.name
    long_final = tmp_path / ("x" * 250 + ".mkv")
    t = temp_path_for(long_final)
    assert len(t.name.encode()) <= 255 and t.suffix == ".mkv" and t.name.startswith(".")


# ---------------------------------------------------------------- publish_atomically


def test_publish_success(tmp_path: Path) -> None:
    final = tmp_path / "out.bin"
    tmp = temp_path_for(final)
    tmp.write_bytes(b"new")
    seen: list[Path] = []
    assert publish_atomically(tmp, final, seen.append) == final
    assert seen == [tmp]  # verify ran on the temp file, before the rename
    assert final.read_bytes() == b"new"
    assert _hidden(tmp_path) == []


def test_verify_failure_leaves_final_absent(tmp_path: Path) -> None:
    final = tmp_path / "out.bin"
    tmp = temp_path_for(final)
    tmp.write_bytes(b"bad")
    with pytest.raises(OutputVerifyError, match="rejected"):
        publish_atomically(tmp, final, _fail)
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []


def test_existing_final_replaced_only_on_success(tmp_path: Path) -> None:
    final = tmp_path / "out.bin"
    final.write_bytes(b"old")
    tmp = temp_path_for(final)
    tmp.write_bytes(b"bad")
    with pytest.raises(OutputVerifyError):
        publish_atomically(tmp, final, _fail)
    assert final.read_bytes() == b"old"
    assert _hidden(tmp_path) == []

    tmp2 = temp_path_for(final)
    tmp2.write_bytes(b"good")
    publish_atomically(tmp2, final, None)
    assert final.read_bytes() == b"good"
    assert _hidden(tmp_path) == []


def test_publish_rejects_other_directory(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    tmp = tmp_path / "a" / ".x.tmp.bin"
    tmp.write_bytes(b"x")
    with pytest.raises(ValueError, match="same directory"):
        publish_atomically(tmp, tmp_path / "x.bin", None)
    assert not (tmp_path / "x.bin").exists() and not tmp.exists()


def test_publish_missing_temp(tmp_path: Path) -> None:
    with pytest.raises(OutputVerifyError, match="not written"):
        publish_atomically(tmp_path / ".nothing.bin", tmp_path / "x.bin", None)


# ---------------------------------------------------------------- atomic_output


def test_atomic_output_success(tmp_path: Path) -> None:
    final = tmp_path / "ok.txt"
    with atomic_output(final) as tmp:
        assert tmp.parent == tmp_path and tmp != final
        tmp.write_text("done")
        assert not final.exists()  # nothing at the final path while writing
    assert final.read_text() == "done"
    assert _hidden(tmp_path) == []


@pytest.mark.parametrize("exc", [RuntimeError("crash"), KeyboardInterrupt()])
def test_atomic_output_exception_cleans_up(tmp_path: Path, exc: BaseException) -> None:
    final = tmp_path / "out.txt"
    final.write_text("old")
    with pytest.raises(type(exc)), atomic_output(final) as tmp:
        tmp.write_text("half-writ")
        raise exc
    assert final.read_text() == "old"
    assert _hidden(tmp_path) == []


def test_atomic_output_nothing_written(tmp_path: Path) -> None:
    final = tmp_path / "never.txt"
    with pytest.raises(OutputVerifyError, match="not written"), atomic_output(final):
        pass
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_verify_failure(tmp_path: Path) -> None:
    final = tmp_path / "v.txt"
    with pytest.raises(OutputVerifyError), atomic_output(final, verify=_fail) as tmp:
        tmp.write_text("x")
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"), atomic_output(tmp_path / "no" / "x.mp4"):
        pass


# ---------------------------------------------------------------- verify_video


def test_end_to_end_video_publish(tmp_path: Path) -> None:
    final = tmp_path / "shot.mp4"
    check = functools.partial(verify_video, expected_frames=40, expected_duration_s=2.5)
    with atomic_output(final, verify=check) as tmp:
        _write_video(tmp, 45, audio_s=2.5)  # video trimmed to the 2.5 s of audio -> 40 frames
    verify_video(final, expected_frames=40, expected_duration_s=2.5)
    assert _hidden(tmp_path) == []


def test_end_to_end_video_publish_rejected(tmp_path: Path) -> None:
    final = tmp_path / "shot.mp4"
    final.write_bytes(b"previous")
    check = functools.partial(verify_video, expected_frames=80)
    with (
        pytest.raises(OutputVerifyError, match="decoded 40 frames, expected 80"),
        atomic_output(final, verify=check) as tmp,
    ):
        _write_video(tmp, 40)
    assert final.read_bytes() == b"previous"
    assert _hidden(tmp_path) == []


def test_verify_video_checks(tmp_path: Path) -> None:
    path = tmp_path / "v.mp4"
    _write_video(path, 32, fps=16, audio_s=2.0)
    verify_video(path)
    verify_video(path, expected_frames=32, expected_duration_s=2.0)
    verify_video(path, expected_frames=33)  # within +-1 frame
    verify_video(path, expected_duration_s=2.0 + 1 / 16)
    with pytest.raises(OutputVerifyError, match="decoded 32 frames, expected 34"):
        verify_video(path, expected_frames=34)
    with pytest.raises(OutputVerifyError, match="expected 34"):
        verify_video(path, expected_frames=34, tolerance_frames=1)
    verify_video(path, expected_frames=34, tolerance_frames=2)
    with pytest.raises(OutputVerifyError, match="video duration 2.0000 s"):
        verify_video(path, expected_duration_s=2.2)


def test_verify_video_audio_duration(tmp_path: Path) -> None:
    # The video matches (32 frames = 2.0 s) but the audio is only 1.0 s long: rejected.
    path = tmp_path / "a.mp4"
    with Mp4Writer(path, W, H, fps=16) as w:
        w.write(_frames(32))
        w.close(audio=(np.zeros(16000, np.float32), 16000), audio_trim_to_video=True)
    with pytest.raises(OutputVerifyError, match="audio duration"):
        verify_video(path, expected_frames=32, expected_duration_s=2.0)


def test_verify_video_undecodable(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 100)
    with pytest.raises(OutputVerifyError, match="not a decodable video"):
        verify_video(junk)
    good = tmp_path / "good.mp4"
    _write_video(good, 32)
    data = good.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(OutputVerifyError):
        verify_video(cut, expected_frames=32)
    with pytest.raises(OutputVerifyError, match="does not exist"):
        verify_video(tmp_path / "missing.mp4")


def test_a_failing_cleanup_does_not_mask_the_original_error(tmp_path, monkeypatch):
    import errno
    import os

    from render.media.publish import atomic_output

    def unlink(path, *a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    with pytest.raises(OSError) as info:
        with atomic_output(tmp_path / "o.mp4") as tmp:
            tmp.write_bytes(b"x")
            monkeypatch.setattr(os, "unlink", unlink)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
    assert info.value.errno == errno.ENOSPC
