from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from manifests import ManifestError, Shot, main_validate, read_manifest, validate_manifest
from manifests.schema import DEFAULT_SIZE, derive_seed, write_manifest
from tests.manifests.malformed_cases import (
    AUDIO,
    CASES,
    IMAGE,
    POSE,
    base_row,
    build_case,
    make_media,
    make_wav,
    rows,
)


def _triples(problems) -> set[tuple]:
    return {(p.row, p.column, p.rule) for p in problems}


def test_there_are_at_least_30_distinct_malformed_cases():
    error_cases = [c for c in CASES if c.errors]
    assert len(error_cases) >= 30
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_malformed_case_reports_exact_problems(case, tmp_path):
    d = tmp_path / "case"
    manifest = build_case(case, d)
    report = validate_manifest(manifest)
    assert _triples(report.errors) == case.errors, report.format_table()
    assert _triples(report.warnings) == case.warnings, report.format_table()
    assert report.ok == (not case.errors)
    ids = _shot_ids(manifest)
    for p in report.problems:
        assert p.message  # every problem says what was expected
        if p.row is not None:
            assert p.shot_id == ids[p.row]  # problems are labelled with the row's shot id


def _shot_ids(manifest: Path) -> list:
    try:
        table = pq.read_table(manifest)
    except pa.ArrowException:
        return []
    if "shot_id" not in table.column_names:
        return [None] * table.num_rows
    return table.column("shot_id").to_pylist()


def test_valid_manifest_passes_with_all_columns(tmp_path):
    make_media(tmp_path)
    full = base_row(0) | {
        "negative_prompt": "blurry",
        "size": "1024*704",
        "seed": 1234,
        "steps": 8,
        "guidance": 5,  # int given for a float column
        "sampler": "dpm++",
        "shift": 5.0,
        "pose_video": POSE,
        "priority": 3,
        "sequence": "film",
        "order": 0,
        "segment_mode": "parallel",
    }
    second = base_row(1) | {"sequence": "film", "order": 1, "size": "256*256", "audio": str(tmp_path / AUDIO)}
    write_manifest([full, second], tmp_path / "m.parquet")
    report = validate_manifest(tmp_path / "m.parquet")
    assert report.ok and report.problems == [], report.format_table()
    assert "OK (2 shot(s))" in report.format_table()

    shots = read_manifest(tmp_path / "m.parquet", None, run_seed=7)
    assert [s.shot_id for s in shots] == ["shot0", "shot1"]
    s0, s1 = shots
    assert s0.audio == (tmp_path / AUDIO).resolve() and s0.pose_video == (tmp_path / POSE).resolve()
    assert s0.output == (tmp_path / "out" / "shot0.mp4").resolve()
    assert (s0.seed, s0.seed_source, s0.guidance, s0.sampler, s0.max_area) == (
        1234,
        "manifest",
        5.0,
        "dpm++",
        1024 * 704,
    )
    assert s1.seed == derive_seed(7, "shot1") and s1.seed_source == "derived"
    assert (s1.steps, s1.guidance, s1.shift, s1.sampler, s1.segment_mode) == (40, 4.5, 3.0, "unipc", "auto")
    assert s1.negative_prompt is None and s1.pose_video is None and s1.priority == 0
    # the derived seed is a pure function of (run seed, shot id)
    assert read_manifest(tmp_path / "m.parquet", None, run_seed=7)[1].seed == s1.seed
    assert read_manifest(tmp_path / "m.parquet", None, run_seed=8)[1].seed != s1.seed


def test_minimal_manifest_defaults(tmp_path):
    make_media(tmp_path)
    write_manifest([base_row(0)], tmp_path / "m.parquet")
    (shot,) = read_manifest(tmp_path / "m.parquet", [tmp_path])
    assert isinstance(shot, Shot)
    assert shot.size == DEFAULT_SIZE and shot.order is None and shot.sequence is None and shot.row == 0


def test_narrow_int_and_dictionary_columns_are_accepted(tmp_path):
    make_media(tmp_path)
    table = pa.Table.from_pylist(rows())
    table = (
        table.append_column("steps", pa.array([4, 8], pa.int8()))
        .append_column("seed", pa.array([1, 2**32 - 1], pa.uint32()))
        .append_column("priority", pa.array([-3, 2], pa.int16()))
        .append_column("guidance", pa.array([4, 5], pa.int32()))
        .append_column("shift", pa.array([2.0, 3.5], pa.float32()))
        .append_column("sampler", pa.array(["unipc", "dpm++"]).dictionary_encode())
        .append_column("order", pa.array([1.0, None]))  # pandas-style nullable int
    )
    write_manifest(table, tmp_path / "m.parquet")
    shots = read_manifest(tmp_path / "m.parquet")
    assert [s.steps for s in shots] == [4, 8] and shots[1].seed == 2**32 - 1
    assert [s.guidance for s in shots] == [4.0, 5.0] and isinstance(shots[0].guidance, float)
    assert [s.sampler for s in shots] == ["unipc", "dpm++"] and shots[0].order == 1


def test_many_problems_are_all_reported(tmp_path):
    make_media(tmp_path)
    bad = rows(
        {"shot_id": "a b", "steps": 0, "audio": "../x.wav", "size": "1*1"},
        {"shot_id": "shot0", "prompt": "", "image": "missing.png", "guidance": 99.0},
        {
            "output": "out/shot0.mp4",
            "audio": "https://x/y.wav",
            "seed": -5,
            "sampler": "ddim",
            "colour": "red",
        },
        n=3,
    )
    write_manifest(bad, tmp_path / "m.parquet", strict=False)
    report = validate_manifest(tmp_path / "m.parquet")
    expected = {
        (None, "colour", "unknown-column"),
        (0, "shot_id", "bad-id"),
        (0, "steps", "range"),
        (0, "audio", "path-escape"),
        (0, "size", "bad-size"),
        (1, "prompt", "empty"),
        (1, "image", "missing-file"),
        (1, "guidance", "range"),
        (2, "audio", "url"),
        (2, "seed", "range"),
        (2, "sampler", "choice"),
        (2, "output", "duplicate-output"),
    }
    assert _triples(report.errors) == expected
    table = report.format_table()
    assert table.count("\n") >= len(expected) + 2
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("row"))
    # aligned: the rule column starts at the same offset on every problem line
    rule_at = header.index("rule")
    assert lines[-1].startswith(f"summary: {len(expected)} error(s)")  # the table ends with a summary line
    problem_lines = [line for line in lines[lines.index(header) + 2 : -1] if line.strip()]
    assert all(line[rule_at - 2 : rule_at] == "  " for line in problem_lines)
    data = json.loads(report.to_json())
    assert data["ok"] is False and data["errors"] == len(expected)
    assert {(p["row"], p["column"], p["rule"]) for p in data["problems"]} == expected
    with pytest.raises(ManifestError) as info:
        read_manifest(tmp_path / "m.parquet")
    assert _triples(info.value.problems) == expected
    assert "duplicate-output" in str(info.value)


def test_value_is_truncated_repr(tmp_path):
    make_media(tmp_path)
    write_manifest(rows({"prompt": "z" * 20_000}), tmp_path / "m.parquet")
    (problem,) = validate_manifest(tmp_path / "m.parquet").problems
    assert problem.value.startswith("'zzz") and problem.value.endswith("...") and len(problem.value) <= 60


def test_symlink_inside_root_is_fine_and_outside_is_not(tmp_path):
    root = tmp_path / "root"
    make_media(root)
    os.symlink(root / AUDIO, root / "alias.wav")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    os.symlink(make_wav(outside / "x.wav"), root / "escape.wav")
    write_manifest(rows({"audio": "alias.wav"}, {"audio": "escape.wav"}), root / "m.parquet")
    report = validate_manifest(root / "m.parquet")
    assert _triples(report.errors) == {(1, "audio", "symlink")}
    # the same file is fine once its directory is an allowed root
    assert validate_manifest(root / "m.parquet", [root, outside]).ok
    assert (
        main_validate([str(root / "m.parquet"), "--allowed-root", str(root), "--allowed-root", str(outside)])
        == 0
    )


def test_urls_are_refused_even_without_media_checks(tmp_path):
    make_media(tmp_path)
    write_manifest(
        rows({"audio": "HTTPS://example.com/a.wav"}, {"image": "s3://bucket/i.png"}), tmp_path / "m.parquet"
    )
    report = validate_manifest(tmp_path / "m.parquet", check_media=False)
    assert _triples(report.errors) == {(0, "audio", "url"), (1, "image", "url")}


def test_base_dir_and_allowed_roots(tmp_path):
    media = tmp_path / "media"
    make_media(media)
    manifests_dir = tmp_path / "manifests"
    manifests_dir.mkdir()
    write_manifest(rows(), manifests_dir / "m.parquet")
    # relative paths resolve against the manifest's directory by default: files are not there
    assert not validate_manifest(manifests_dir / "m.parquet").ok
    shots = read_manifest(manifests_dir / "m.parquet", [media], base_dir=media)
    assert shots[0].image == (media / IMAGE).resolve()


def test_no_media_check_skips_decoding_but_not_existence(tmp_path):
    make_media(tmp_path)
    (tmp_path / "text.wav").write_text("not audio")
    write_manifest(rows({"audio": "text.wav"}, {"image": "gone.png"}), tmp_path / "m.parquet")
    report = validate_manifest(tmp_path / "m.parquet", check_media=False)
    assert _triples(report.errors) == {(1, "image", "missing-file")}
    assert main_validate([str(tmp_path / "m.parquet"), "--no-media-check"]) == 2


def test_main_validate_exit_codes_and_output(tmp_path, capsys):
    make_media(tmp_path)
    good, bad = tmp_path / "good.parquet", tmp_path / "bad.parquet"
    write_manifest(rows(), good)
    write_manifest(rows({"steps": 0}), bad)
    assert main_validate([str(good)]) == 0
    assert "OK" in capsys.readouterr().out
    assert main_validate([str(bad)]) == 2
    out = capsys.readouterr().out
    assert "steps" in out and "range" in out and "shot0" in out
    assert main_validate([str(bad), "--json"]) == 2
    data = json.loads(capsys.readouterr().out)
    assert [(p["row"], p["column"], p["rule"]) for p in data["problems"]] == [(0, "steps", "range")]
    assert main_validate([str(tmp_path / "absent.parquet")]) == 3
    assert "not-found" in capsys.readouterr().out
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 but not really")
    assert main_validate([str(tmp_path / "junk.parquet"), "--json"]) == 3
    assert json.loads(capsys.readouterr().out)["problems"][0]["rule"] == "not-parquet"
    assert main_validate([str(tmp_path)]) == 3  # a directory is not a manifest
    assert main_validate(["--no-such-flag"]) == 2  # usage error, like every s2v command


def test_validation_never_starts_a_process(tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("validation must not start processes")

    for name in ("Popen", "run", "call", "check_call", "check_output"):
        monkeypatch.setattr(subprocess, name, forbidden)
    for name in ("system", "popen", "execv", "execvp", "spawnv", "posix_spawn", "fork"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, forbidden)
    make_media(tmp_path)
    write_manifest(
        rows({"pose_video": POSE, "prompt": "$(touch pwned); `id`"}, {"audio": "|id"}), tmp_path / "m.parquet"
    )
    report = validate_manifest(tmp_path / "m.parquet")
    assert _triples(report.errors) == {(1, "audio", "missing-file")}
    assert not (tmp_path / "pwned").exists()


def test_image_formats_and_default_roots_use_manifest_dir(tmp_path):
    make_media(tmp_path)
    sub = tmp_path / "sub"
    sub.mkdir()
    # a manifest in a subdirectory may not reach its parent's media by default
    write_manifest(rows({"image": "../" + IMAGE, "audio": "../" + AUDIO}, n=1), sub / "m.parquet")
    report = validate_manifest(sub / "m.parquet")
    assert _triples(report.errors) == {(0, "audio", "path-escape"), (0, "image", "path-escape")}
    assert validate_manifest(sub / "m.parquet", [tmp_path]).ok


def test_table_escapes_control_characters_and_clips_labels(tmp_path):
    make_media(tmp_path)
    write_manifest(rows({"shot_id": "evil\nid", "steps": 0}, {"shot_id": "x" * 300}), tmp_path / "m.parquet")
    report = validate_manifest(tmp_path / "m.parquet")
    assert _triples(report.errors) == {
        (0, "shot_id", "bad-id"),
        (0, "steps", "range"),
        (1, "shot_id", "bad-id"),
    }
    assert report.errors[0].shot_id == "evil\nid"  # the Problem keeps the raw label
    table = report.format_table()
    assert "evil\\nid" in table
    (row1,) = [line for line in table.splitlines() if line.startswith("1 ")]
    assert row1.split()[1] == "x" * 37 + "..."  # the shot_id cell is clipped to 40 characters
    # title, header, rule line, one line per problem, a blank line and the summary
    assert len(table.splitlines()) == 1 + 2 + 3 + 2


def test_a_path_escape_says_how_to_allow_it(tmp_path, capsys):
    """The message names the option that allows media elsewhere and the default root."""
    from s2v.cli import main

    make_media(tmp_path)
    sub = tmp_path / "m"
    sub.mkdir()
    write_manifest(rows({"audio": str(tmp_path / AUDIO), "image": str(tmp_path / IMAGE)}, n=1), sub / "m.parquet")
    problem = validate_manifest(sub / "m.parquet", check_media=False).errors[0]
    assert problem.rule == "path-escape"
    assert f"outside the allowed roots ({sub.resolve()}); to allow it, pass --allowed-root DIR" in problem.message
    assert "the only allowed root is the manifest's folder" in problem.message
    assert main(["validate", "--no-media-check", "--all", str(sub / "m.parquet")]) == 2
    assert "--allowed-root DIR" in capsys.readouterr().out
    assert main(["validate", "--no-media-check", "--allowed-root", str(tmp_path), str(sub / "m.parquet")]) == 0
