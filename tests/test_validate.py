"""``galmock validate`` end to end on the demo galaxy's solar-sphere job, through the real CLI.

The acceptance run trains a small CNF on the particles within 3.5 kpc of the Sun (held out 1:1),
then validates it against the simplified EnBiD baseline and the exact demo density; the report
is opened in headless Chromium.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from galmock.plan import build_sphere_plan
from galmock.stages.validate import radial_profile_report
from galmock.validate.profile import radial_profile

REPO = Path(__file__).resolve().parent.parent
SOLAR = REPO / "jobs" / "solar-sphere.yaml"

# A reduced solar-sphere job: ~4,900 particles in the sphere (half held out), a small CNF, a
# small classifier and 10x oversampling; ~1.5 min for train + validate on 2 cores.
SMALL = [
    "galaxy.demo.n_particles=150000",
    # Flow matching (the default recipe): 40 epochs of 50 steps of 1024 rows per flow.
    "flows.hidden_features=32", "flows.hidden_layers=3",
    "flows.training.batches_per_epoch=50", "flows.training.batch_rows=1024",
    "flows.training.learning_rate=3.0e-3", "flows.training.patience_epochs=10",
    "flows.training.max_epochs=40", "flows.training.ensemble_size=1", "flows.threads=1",
    "validate.upsamplers=[cnf, enbid]", "validate.oversample=10",
    "validate.classifier_hidden=[64, 64]", "validate.classifier_batch_size=1024",
    "validate.classifier_patience_epochs=5", "validate.classifier_max_epochs=40",
]  # fmt: skip


def galmock(*args: str, sets: list[str] = ()) -> subprocess.CompletedProcess:  # type: ignore[assignment]
    flags = [x for s in sets for x in ("--set", s)]
    return subprocess.run([sys.executable, "-m", "galmock", *args, *flags], cwd=REPO,
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def validated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    run = tmp_path_factory.mktemp("solar") / "run"
    sets = [*SMALL, "seed=3"]
    trained = galmock("run", str(SOLAR), "--until", "train", "--output", str(run), sets=sets)
    assert trained.returncode == 0, trained.stderr[-3000:]
    result = galmock("validate", str(SOLAR), "--output", str(run), sets=sets)
    assert result.returncode == 0, result.stderr[-3000:]
    return run, result


@pytest.mark.slow
def test_classifier_ranks_cnf_above_enbid(validated: tuple[Path, subprocess.CompletedProcess]):
    run, result = validated
    report = json.loads((run / "report" / "report.json").read_text())
    test = report["classifier_test"]
    assert test["best"] == "cnf"
    enbid = test["differences"]["enbid"]
    # The paired LP difference is the acceptance criterion: > 5 standard errors.
    assert enbid["mean"] > 5 * enbid["stderr"] > 0
    assert enbid["significance"] == pytest.approx(enbid["mean"] / enbid["stderr"])
    scores = {s["label"]: s for s in test["scores"]}
    assert scores["cnf"]["lp"] > scores["enbid"]["lp"]
    assert set(test["pairwise_auc"]) == {"cnf vs enbid"}
    assert 0.5 < test["pairwise_auc"]["cnf vs enbid"] <= 1.0
    assert report["test_particles"] > 1000 and report["plan"]["holdout_fraction"] == 0.5
    # The ranking table went to stdout with the same numbers.
    assert "best: cnf" in result.stdout
    assert f"{enbid['mean']:.4g}" in result.stdout


@pytest.mark.slow
def test_truth_and_mmd_numbers(validated: tuple[Path, subprocess.CompletedProcess]) -> None:
    run, _ = validated
    report = json.loads((run / "report" / "report.json").read_text())
    truth = report["truth"]
    assert truth["available"] and 0 < truth["selection_probability"] < 1
    for label in ("cnf", "enbid"):
        assert 0.4 < truth["upsamplers"][label]["auc"] <= 1.0
    ll = truth["upsamplers"]["cnf"]["heldout_loglikelihood"]
    # Both normalised to the sphere, so model - truth estimates -KL <= 0: a normalisation
    # error larger than ~3 SE in either would show up as a positive difference.
    assert ll["difference_mean"] < 3 * ll["difference_stderr"]
    assert ll["difference_mean"] == pytest.approx(ll["model_mean"] - ll["truth_mean"], abs=1e-9)
    assert ll["test_particles"] + ll["test_particles_without_support"] == report["test_particles"]
    for label in ("cnf", "enbid", "truth"):
        mmd = report["mmd"][label]
        assert mmd["stderr"] > 0 and abs(mmd["mmd2"]) < 1.0
        assert mmd["pairs"] == report["test_particles"] // 2
    # The truth is the test particles' own distribution: MMD^2 = 0 within 4 SE.
    assert abs(report["mmd"]["truth"]["mmd2"]) < 4 * report["mmd"]["truth"]["stderr"]
    assert report["seams"] == {"faces": [], "note": "no internal faces (a single region)"}


def test_radial_profile_flags_a_compressed_halo() -> None:
    """Stars drawn from the particles' own profile pass (|z| < 4 in every shell); stars whose
    halo beyond 30 kpc was pulled in by a third fail there by many standard errors."""
    rng = np.random.default_rng(3)
    particle_r = 10 ** rng.uniform(-0.5, 2.0, 50_000)  # log-uniform: a halo to 100 kpc
    faithful = 10 ** rng.uniform(-0.5, 2.0, 1_000_000)
    rows = radial_profile(particle_r, np.ones(len(particle_r)), faithful)
    assert max(abs(row["z"]) for row in rows) < 4
    assert sum(row["particles"] for row in rows) == len(particle_r)
    compressed = np.where(faithful > 30, 30 + (faithful - 30) / 3, faithful)
    rows = {row["r_lo_kpc"]: row for row in radial_profile(particle_r, np.ones(len(particle_r)),
                                                           compressed)}
    assert rows[70]["ratio"] < 0.1 and rows[70]["z"] < -10
    assert rows[30]["ratio"] > 1.3 and rows[30]["z"] > 10


def test_radial_profile_merges_shells_of_a_few_particles() -> None:
    """One particle at 147 kpc beyond a halo cut at 100 kpc, and a few times its share of stars
    smoothed around it: on its own shell z read 4.2 (seed 43 demo); merged into the shell inside
    it (>= 25 particles) the comparison stays normal and passes."""
    rng = np.random.default_rng(4)
    particle_r = np.append(10 ** rng.uniform(0.0, 2.0, 20_000), 147.0)
    star_r = np.append(10 ** rng.uniform(0.0, 2.0, 2_000_000), rng.uniform(100, 147, 500))
    rows = radial_profile(particle_r, np.ones(len(particle_r)), star_r)
    assert min(row["particles"] for row in rows) >= 25
    assert rows[-1]["r_lo_kpc"] == 70 and rows[-1]["particles"] > 25
    assert max(abs(row["z"]) for row in rows) < 4
    assert sum(row["particles"] for row in rows) == len(particle_r)


@pytest.mark.slow
def test_report_files(validated: tuple[Path, subprocess.CompletedProcess]) -> None:
    run, _ = validated
    report_dir = run / "report"
    report = json.loads((report_dir / "report.json").read_text())
    files = {f["file"] for f in report["figures"]}
    assert {"pm-window.png", "corner-cnf.png", "corner-enbid.png", "vxvy.png",
            "classifier.png"} <= files
    for name in files:
        assert (report_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (report_dir / "index.html").read_text()
    enbid = report["classifier_test"]["differences"]["enbid"]
    assert f"{enbid['mean']:.4g}" in html and "Multi-model classifier test" in html
    assert not list(run.glob(".report.tmp-*"))  # the staging directory was renamed away


# -- headless Chromium ---------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _skip_or_fail(message: str) -> None:
    if _ci():
        pytest.fail(f"{message}; CI=true requires the Chromium report test")
    pytest.skip(message)


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium, installed with apt-get the first time (as root), reused after."""
    if not CHROMIUM.exists():
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            _skip_or_fail("no /usr/bin/chromium and cannot apt-get install it (not root/Debian)")
        cmd = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y",
               "--no-install-recommends", "chromium"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                              env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if done.returncode != 0 or not CHROMIUM.exists():
            _skip_or_fail(f"apt-get install chromium failed: {(done.stderr or done.stdout)[-800:]}")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _skip_or_fail("the playwright package is not installed (pip install -e '.[test]')")
    return CHROMIUM


@pytest.mark.slow
def test_index_html_renders_in_chromium(
    validated: tuple[Path, subprocess.CompletedProcess], chromium: Path
) -> None:
    from playwright.sync_api import sync_playwright

    index = validated[0] / "report" / "index.html"
    errors: list[str] = []
    failed: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: failed.append(r.url))
        page.goto(index.as_uri())
        page.wait_for_load_state("load")
        images = page.eval_on_selector_all(
            "img", "els => els.map(e => [e.getAttribute('src'), e.complete, e.naturalWidth])"
        )
        links = page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))")
        browser.close()
    assert len(images) >= 5
    for src, complete, width in images:
        assert complete and width > 0, f"image {src} did not render"
    for ref in [src for src, _, _ in images] + links:
        assert "://" not in ref and not ref.startswith("/"), f"non-relative link {ref}"
        assert (index.parent / ref).is_file(), f"broken link {ref}"
    assert not errors, errors
    assert not failed, failed


@pytest.mark.slow
def test_rerun_gives_the_same_report(validated: tuple[Path, subprocess.CompletedProcess]) -> None:
    """Same run, config and seed: the same numbers (CPU, same threads), and the old report is
    replaced whole."""
    run, _ = validated
    before = json.loads((run / "report" / "report.json").read_text())
    again = galmock("validate", str(SOLAR), "--output", str(run), sets=[*SMALL, "seed=3"])
    assert again.returncode == 0, again.stderr[-3000:]
    after = json.loads((run / "report" / "report.json").read_text())
    for key in ("classifier_test", "truth", "mmd", "upsamplers"):
        a, b = before[key], after[key]
        if key == "classifier_test":
            a, b = ({**x, "classifier": {**x["classifier"], "seconds": 0}} for x in (a, b))
        if key == "truth":
            a, b = ({**x, "seconds_drawing": 0} for x in (a, b))
        if key == "upsamplers":
            a, b = ({k: {**v, "seconds": 0} for k, v in x.items()} for x in (a, b))
        assert a == b, key
    assert not list(run.glob(".report.*"))


@pytest.mark.slow
def test_other_flow_kinds_are_trained_once_and_cached(
    validated: tuple[Path, subprocess.CompletedProcess], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(validated[0], run, ignore=shutil.ignore_patterns("report"))
    sets = [*SMALL, "seed=3", "validate.upsamplers=[cnf, maf]", "flows.maf.transforms=1",
            "flows.training.max_epochs=8", "validate.truth=false", "validate.figures=false"]
    first = galmock("validate", str(SOLAR), "--output", str(run), sets=sets)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "validate: training maf for region 0" in first.stderr
    assert (run / "validate-models" / "maf" / "region-0000" / "manifest.json").is_file()
    report = json.loads((run / "report" / "report.json").read_text())
    assert {s["label"] for s in report["classifier_test"]["scores"]} == {"cnf", "maf"}
    assert report["truth"] == {"available": False, "reason": "validate.truth = false"}
    for label in ("cnf", "maf"):  # held-out log-likelihoods without a truth
        assert math.isfinite(report["upsamplers"][label]["heldout_loglikelihood"]["mean"])
    assert report["figures"] == [] and not list((run / "report").glob("*.png"))
    second = galmock("validate", str(SOLAR), "--output", str(run), sets=sets)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "training maf" not in second.stderr  # the cached model is reused


@pytest.mark.slow
def test_models_trained_on_other_particles_are_refused(
    validated: tuple[Path, subprocess.CompletedProcess], tmp_path: Path
) -> None:
    """Ingest and plan rerun on another galaxy, no train: validate would score the old models
    against the new particles (#16); it refuses, naming the model."""
    run = tmp_path / "run"
    shutil.copytree(validated[0], run, ignore=shutil.ignore_patterns("report"))
    sets = [*SMALL, "seed=3", "galaxy.demo.n_particles=140000"]
    replanned = galmock("run", str(SOLAR), "--until", "plan", "--output", str(run), sets=sets)
    assert replanned.returncode == 0, replanned.stderr[-3000:]
    result = galmock("validate", str(SOLAR), "--output", str(run), sets=sets)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "region-0000: the model was trained on other particles than the run has now" \
        in result.stderr
    assert not (run / "report").exists()


def test_a_sphere_plans_radial_profile_covers_its_ball() -> None:
    """A sphere plan's stars fill its ball only: the profile compares them with the ball's
    particles in 1 kpc shells across it (sparse ones merged). Against the whole galaxy's
    particles, stars drawn faithfully within the ball read 0 in every shell outside it and too
    many inside."""
    rng = np.random.default_rng(5)
    pos = rng.normal(0.0, 5.0, (60_000, 3))
    plan = build_sphere_plan(pos, np.ones(len(pos)), np.arange(len(pos)), (-8.1, 0.0, 0.0), 3.5)
    inside = pos[plan.owner(pos) == 0]
    draws = inside[rng.integers(0, len(inside), 400_000)] + rng.normal(0, 0.01, (400_000, 3))
    draws = draws[plan.owner(draws) == 0]
    stars = {c: draws[:, k] for k, c in enumerate("xyz")}
    report = radial_profile_report(pos, np.ones(len(pos)), plan, stars, "{} test stars")
    shells = report["shells"]
    assert sum(s["particles"] for s in shells) == len(inside)
    assert shells[0]["r_lo_kpc"] == 4.0 and shells[-1]["r_hi_kpc"] == 12.0
    assert len(shells) >= 5 and all(s["r_hi_kpc"] - s["r_lo_kpc"] <= 2.0 for s in shells)
    assert max(abs(s["z"]) for s in shells) < 4, [(s["ratio"], s["z"]) for s in shells]
