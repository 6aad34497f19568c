"""validate's refusals (clear errors, exit 1, no report left) and its pure parts: seams, truth."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from galmock.errors import ConfigError
from galmock.particles import read_particle_store
from galmock.plan import build_kdtree_plan
from galmock.validate.seams import internal_faces, seam_counts, seam_steps
from galmock.validate.truth import DemoTruth, heldout_loglikelihood, truth_draws
from galmock.validate.upsamplers import parse_upsamplers

REPO = Path(__file__).resolve().parent.parent
SOLAR = REPO / "jobs" / "solar-sphere.yaml"


def galmock(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "galmock", *args], cwd=REPO,
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two ingested and planned (not trained) runs: holdout 0.5 and holdout 0."""
    out = {}
    for name, holdout in (("held", 0.5), ("none", 0.0)):
        run = tmp_path_factory.mktemp(name) / "run"
        done = galmock("run", str(SOLAR), "--until", "plan", "--output", str(run),
                       "--set", "galaxy.demo.n_particles=20000",
                       "--set", f"plan.holdout_fraction={holdout}")
        assert done.returncode == 0, done.stderr
        out[name] = run
    return out


def _refused(run: Path, *sets: str) -> str:
    flags = [x for s in sets for x in ("--set", s)]
    done = galmock("validate", str(SOLAR), "--output", str(run), *flags)
    assert done.returncode == 1, done.stderr
    assert not (run / "report").exists()
    assert not list(run.glob(".report*"))
    return done.stderr


def test_holdout_zero_is_refused(planned: dict[str, Path]) -> None:
    err = _refused(planned["none"])
    assert "plan.json: plan.holdout_fraction = 0.0" in err
    assert "set plan.holdout_fraction (e.g. 0.5" in err


def test_missing_models_are_refused(planned: dict[str, Path]) -> None:
    err = _refused(planned["held"])
    assert "models/region-0000: trained model not found" in err
    assert "run `galmock train` first" in err


def test_unknown_upsampler_is_refused(planned: dict[str, Path]) -> None:
    err = _refused(planned["held"], "validate.upsamplers=[enbid, gan]")
    assert "validate.upsamplers[1] = 'gan': unknown upsampler" in err


def test_missing_catalog_is_refused(planned: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "other" / "stars.zarr"
    err = _refused(planned["held"], f"validate.upsamplers=[enbid, {missing}]")
    assert f"validate.upsamplers[1] = '{missing}': catalog {missing} not found" in err


def test_upsampler_labels(tmp_path: Path) -> None:
    (tmp_path / "stars.zarr").mkdir()
    specs = parse_upsamplers(["cnf", "maf", "enbid", f"{tmp_path}/stars.zarr"], "cnf")
    assert [(s.label, s.kind) for s in specs] == [
        ("cnf", "flow"), ("maf", "flow"), ("enbid", "enbid"), ("stars", "catalog")]
    with pytest.raises(ConfigError, match="appear more than once"):
        parse_upsamplers(["cnf", "cnf"], "cnf")


# -- seams ---------------------------------------------------------------------------------------


def _plan_and_points(n: int, seed: int) -> tuple[object, np.ndarray]:
    rng = np.random.default_rng(seed)
    pos = rng.uniform(-1, 1, size=(n, 3))
    plan = build_kdtree_plan(pos, np.ones(n), np.arange(n), target_particles=n // 4 + 1,
                             margin_kpc=0.1)
    return plan, pos


def test_seams_faces_and_statistic() -> None:
    plan, particles = _plan_and_points(40_000, 0)
    faces = internal_faces(plan)
    assert len(faces) == len(plan.regions) - 1 == 3  # a binary tree of 4 leaves
    rng = np.random.default_rng(1)
    smooth = rng.uniform(-1, 1, size=(200_000, 3))
    rows = seam_counts(faces, smooth, particles, width=0.2)
    # Same density on both sides: every z is a standard normal draw; |z| < 4 for all 3 faces
    # fails with probability ~2e-4.
    assert all(abs(r["z"]) < 4 for r in rows)
    face = faces[0]
    # A seam: drop 30% of the samples on the right of the first face (within its box).
    x = smooth[:, face.axis]
    right = (x >= face.value) & (x < face.value + 0.2) & (rng.uniform(size=len(x)) < 0.3)
    jumpy = seam_counts([face], smooth[~right], particles, width=0.2)[0]
    # Expected statistic log(1/0.7) = 0.357 with SE ~0.03: far beyond 5 SE.
    assert jumpy["z"] > 5
    assert jumpy["log_ratio_difference"] == pytest.approx(math.log(1 / 0.7), abs=0.12)


def test_seam_step_from_stars_alone_ignores_gradients_and_finds_jumps() -> None:
    """The step needs no particles: on a smooth density with a steep gradient across the face it
    is 0 within its standard error, and a real factor across the face comes out as its log."""
    plan, _ = _plan_and_points(40_000, 0)
    face = internal_faces(plan)[0]
    rng = np.random.default_rng(3)
    # Exponential along the face's axis (scale 0.5: a 2x density change per 0.35 kpc).
    pts = rng.uniform(-1, 1, size=(3_000_000, 3))
    keep = rng.uniform(size=len(pts)) < np.exp((pts[:, face.axis] - 1) / 0.5)
    smooth = pts[keep]
    row = seam_steps([face], smooth, width=0.1)[0]
    assert row["step_stderr"] < 0.02
    # Curvature bias of a pure exponential is 0; a >4 SE miss has probability ~6e-5.
    assert abs(row["step"]) < 4 * row["step_stderr"]
    # Thin the right side by 0.8: a step of log(0.8) = -0.223.
    x = smooth[:, face.axis]
    drop = (x >= face.value) & (rng.uniform(size=len(x)) < 0.2)
    jumpy = seam_steps([face], smooth[~drop], width=0.1)[0]
    assert jumpy["step"] == pytest.approx(math.log(0.8), abs=4 * jumpy["step_stderr"])
    assert abs(jumpy["step"]) / jumpy["step_stderr"] > 5


# -- truth ---------------------------------------------------------------------------------------


def _rotation(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def test_demo_truth_follows_the_store_frame() -> None:
    attrs = {"source": "demo", "source_meta": {"fractions": {"thin_disk": 0.7, "bulge": 0.3}},
             "rotation_matrix": _rotation(30.0).tolist(), "centre_kpc": [0.1, 0.0, 0.0],
             "centre_velocity_kms": [0.0, 5.0, 0.0]}
    plain = DemoTruth.from_attrs({**attrs, "rotation_matrix": np.eye(3).tolist(),
                                  "centre_kpc": [0, 0, 0], "centre_velocity_kms": [0, 0, 0]})
    turned = DemoTruth.from_attrs(attrs)
    pos, vel = plain.sample(2000, np.random.default_rng(0))
    # The same generator stream through the store transform: same points, moved.
    pos_t, vel_t = turned.sample(2000, np.random.default_rng(0))
    np.testing.assert_allclose(pos_t, (pos - [0.1, 0, 0]) @ _rotation(30.0).T, atol=1e-12)
    np.testing.assert_allclose(vel_t, (vel - [0, 5.0, 0]) @ _rotation(30.0).T, atol=1e-12)
    # A rotation has unit Jacobian: the density of a point is unchanged by moving it.
    np.testing.assert_allclose(turned.log_prob(pos_t, vel_t), plain.log_prob(pos, vel),
                               rtol=1e-12)
    assert np.all(np.isfinite(plain.log_prob(pos, vel)))


def test_truth_draws_estimate_the_selection_probability() -> None:
    truth = DemoTruth.from_attrs({"source": "demo",
                                  "source_meta": {"fractions": {"bulge": 1.0}}})

    def inside(p: np.ndarray) -> np.ndarray:
        return (p**2).sum(axis=1) < 1.0

    pos, _, fraction, drawn = truth_draws(truth, inside, 5000, seed=4)
    assert len(pos) == 5000 and inside(pos).all()
    # The exact enclosed fraction of the Hernquist bulge, within 5 binomial SE.
    exact = float(truth.galaxy.component("bulge").enclosed_fraction(np.array(1.0)))
    assert abs(fraction - exact) < 5 * math.sqrt(exact * (1 - exact) / drawn)


def test_heldout_loglikelihood_of_the_truth_itself() -> None:
    rng = np.random.default_rng(2)
    true_logp = rng.normal(-10, 1, 500)
    out = heldout_loglikelihood(true_logp - math.log(0.25), true_logp, 0.25, 10_000)
    assert out["difference_mean"] == pytest.approx(0.0, abs=1e-12)
    assert out["model_mean"] == pytest.approx(true_logp.mean() - math.log(0.25))
    unsupported = np.where(np.arange(500) < 7, -np.inf, true_logp)
    out = heldout_loglikelihood(unsupported, true_logp, 1.0, 10)
    assert out["test_particles_without_support"] == 7 and out["test_particles"] == 493


# -- an external catalog ranked against EnBiD --------------------------------------------------


@pytest.mark.slow
def test_true_draws_as_an_external_catalog_beat_enbid(
    planned: dict[str, Path], tmp_path: Path
) -> None:
    """Fresh draws from the demo galaxy's true density, given as a Parquet catalog, are the
    perfect upsampler: the classifier test must rank them above the EnBiD kernels."""
    run = tmp_path / "run"  # a copy: the refusal tests expect no report in planned["held"]
    shutil.copytree(planned["held"], run)
    truth = DemoTruth.from_attrs(read_particle_store(run / "particles.zarr").attrs)
    pos, vel = truth.sample(400_000, np.random.default_rng(99))
    cols = dict(zip(("x", "y", "z", "vx", "vy", "vz"), [*pos.T, *vel.T]))
    path = tmp_path / "exact.parquet"
    pq.write_table(pa.table(cols), path)
    done = galmock(
        "validate", str(SOLAR), "--output", str(run),
        "--set", f"validate.upsamplers=[enbid, {path}]", "--set", "validate.oversample=20",
        "--set", "validate.classifier_hidden=[64, 64]",
        "--set", "validate.classifier_batch_size=512",
        "--set", "validate.classifier_patience_epochs=5",
        "--set", "validate.classifier_max_epochs=40",
        # One torch thread: a small MLP on 2 threads slows ~100x when the cores are shared.
        "--set", "flows.threads=1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((run / "report" / "report.json").read_text())
    test = report["classifier_test"]
    assert test["best"] == "exact"
    diff = test["differences"]["enbid"]
    assert diff["mean"] > 3 * diff["stderr"]
    assert report["upsamplers"]["exact"]["rows"] == 400_000
    # True draws against true draws: the flow-vs-truth AUC must be 0.5 within 5 SE, where the
    # Mann-Whitney SE under no difference is sqrt((1/n + 1/n) / 12) for n validation draws each.
    truth = report["truth"]["upsamplers"]
    n = truth["exact"]["samples_per_class"] // 2
    assert abs(truth["exact"]["auc"] - 0.5) < 5 * math.sqrt(2 / n / 12)
    assert truth["enbid"]["auc"] > 0.5 + 5 * math.sqrt(2 / n / 12)
    assert report["upsamplers"]["exact"]["draws"] == report["draws_per_upsampler"]
