"""A user's mistake or a refusing environment is a clear error (exit 1) naming the file, key or
path and the value, never a traceback; a bug in galmock is exit 70 with its traceback (#16).

In-process through ``galmock.cli.main`` (what the ``galmock`` command runs), so each case costs
milliseconds; tests/test_cli.py runs the real subprocess.
"""

from __future__ import annotations

import errno
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import galmock.stages
from galmock.cli import EXIT_INTERNAL, main
from galmock.config import load_job
from galmock.stages import run_pipeline, stage

REPO = Path(__file__).resolve().parent.parent
DEMO = str(REPO / "jobs" / "demo.yaml")


def cli(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


def replace_stage(monkeypatch, name: str, run) -> None:
    """Make stage ``name`` run ``run`` (the registry's entry is what run_stage calls)."""
    monkeypatch.setitem(galmock.stages._BY_NAME, name, replace(stage(name), run=run))


def assert_clear(code: int, err: str, *fragments: str) -> None:
    assert code == 1, err
    assert "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


@pytest.mark.parametrize(
    ("setting", "fragments"),
    [
        ("plan.margin_kpc=.inf", ["plan.margin_kpc = inf", "finite number"]),
        ("validate.within_kpc=.nan", ["validate.within_kpc", "finite number"]),
        ("convert.memory_per_worker=lots", ["convert.memory_per_worker = 'lots'",
                                            "not an amount of memory"]),
        ("observer.z_sun_kpc=9", ["|z_sun_kpc| = 9.0 must be below galcen_distance_kpc = 8.122"]),
    ],
)  # fmt: skip
def test_values_that_would_fail_hours_later_are_refused_at_load(
    capsys, tmp_path, setting, fragments
) -> None:
    code, err = cli(capsys, "plan", DEMO, "--output", str(tmp_path / "run"), "--set", setting)
    assert_clear(code, err, "jobs/demo.yaml: invalid job configuration", *fragments)
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_job_files_that_are_not_job_files(capsys, tmp_path) -> None:
    binary = tmp_path / "image.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    assert_clear(*cli(capsys, "plan", str(binary)), "image.yaml: not a text (UTF-8) job file")
    # "Billion laughs": nine levels of nine aliases, 387 million values once expanded.
    lines, previous = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]'], "a"
    for name in "bcdefghi":
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]")
        previous = name
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    assert_clear(*cli(capsys, "plan", str(bomb)), "bomb.yaml: its YAML aliases expand to")
    huge = tmp_path / "huge.yaml"
    huge.write_text("# " + "x" * (2 << 20) + "\n")
    assert_clear(*cli(capsys, "plan", str(huge)), "huge.yaml: 2,097,155 bytes is not a job file")


def test_output_paths_that_cannot_be_a_run_directory(capsys, tmp_path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    assert_clear(*cli(capsys, "plan", DEMO, "--output", str(a_file)),
                 f"{a_file}: the run directory (output) is a file, not a directory")  # fmt: skip
    assert_clear(*cli(capsys, "plan", DEMO, "--output", str(a_file / "run")),
                 f"{a_file / 'run'}: cannot create the run directory (output): Not a directory")
    assert_clear(*cli(capsys, "plan", DEMO, "--output", ""),
                 "output = '' (from --output)")  # not silently runs/<name> here  # fmt: skip
    assert a_file.read_text() == ""


def test_a_refusing_file_system_is_a_clear_error(capsys, tmp_path, monkeypatch) -> None:
    def full(job):
        raise OSError(errno.ENOSPC, "No space left on device", str(job.run_dir / "plan.json"))

    replace_stage(monkeypatch, "plan", full)
    code, err = cli(capsys, "plan", DEMO, "--output", str(tmp_path / "run"))
    assert_clear(code, err, f"{tmp_path / 'run' / 'plan.json'}: No space left on device")


def test_a_bug_is_exit_70_with_its_traceback(capsys, tmp_path, monkeypatch) -> None:
    def bug(job):
        raise ZeroDivisionError("division by zero")

    replace_stage(monkeypatch, "plan", bug)
    code, err = cli(capsys, "plan", DEMO, "--output", str(tmp_path / "run"))
    assert code == EXIT_INTERNAL == 70
    assert "Traceback" in err and "ZeroDivisionError" in err
    assert "internal error (a bug in galmock" in err
    assert not (tmp_path / "run" / "job.yaml").exists()  # a failed stage records no job


def test_a_catalog_planned_past_warn_stars_is_announced_with_its_size(tmp_path, caplog) -> None:
    """The default sampling_fraction 1.0 on a Milky-Way-mass galaxy plans ~10^11 stars (~6 TB)
    without a magnitude limit: plan says so, with the knob to turn; the demo's 2e-5 (1.9 million
    stars) says nothing, nor does a magnitude-limited job (only the visible ~2% are kept)."""
    sets = ["galaxy.demo.n_particles=4000", "plan.target_particles=2000"]
    quiet = load_job(DEMO, overrides=sets, output=tmp_path / "quiet")
    with caplog.at_level("WARNING"):
        run_pipeline(quiet, "ingest", "plan")
    assert "planned at" not in caplog.text
    # Magnitude-limited (the default), stars.zarr holds only the visible few: no warning either.
    limited = load_job(DEMO, overrides=[*sets, "upsample.sampling_fraction=1"],
                       output=tmp_path / "limited")  # fmt: skip
    with caplog.at_level("WARNING"):
        run_pipeline(limited, "ingest", "plan")
    assert "planned at" not in caplog.text
    loud = load_job(DEMO, overrides=[*sets, "upsample.sampling_fraction=1",
                                     "observables.magnitude_limit=null"],
                    output=tmp_path / "loud")  # fmt: skip
    with caplog.at_level("WARNING"):
        run_pipeline(loud, "ingest", "plan")
    assert "upsample: the catalog is planned at 95,8" in caplog.text
    assert "TB in stars.zarr before compression (more than upsample.warn_stars = 1e+09); " \
        "lower upsample.sampling_fraction (now 1.0)" in caplog.text


def immutable(path: Path, on: bool) -> bool:
    """chattr +i/-i: not even root may then create or change entries in ``path``."""
    flag = "+i" if on else "-i"
    return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


def test_an_unwritable_output_is_a_clear_error(tmp_path) -> None:
    """A run directory that cannot be made, or exists and is not writable (tests run as root,
    which ignores permissions, so the directories are made immutable with chattr) (#16)."""
    parent = tmp_path / "readonly"
    (parent / "run").mkdir(parents=True)
    if not immutable(parent, True) or not immutable(parent / "run", True):
        immutable(parent, False)
        pytest.skip("chattr +i is not supported here")
    try:
        for output, message in ((parent / "new", "cannot create the run directory (output): "),
                                (parent / "run", "the run directory (output) is not writable")):
            result = subprocess.run(
                [sys.executable, "-m", "galmock", "plan", DEMO, "--output", str(output)],
                capture_output=True, text=True, cwd=REPO,
            )  # fmt: skip
            assert result.returncode == 1, result.stderr[-2000:]
            assert f"{output}: {message}" in result.stderr and "Traceback" not in result.stderr
        assert sorted(p.name for p in parent.iterdir()) == ["run"]
        assert list((parent / "run").iterdir()) == []
    finally:
        immutable(parent / "run", False)
        immutable(parent, False)
