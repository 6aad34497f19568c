"""The ``validate`` stage: rank upsamplers against the held-out particles, write ``<run>/report/``.

Steps (GalaxyFlow §5.3 and issue #6): the plan's held-out particles inside the selection are the
test set, the others the training set the flows saw; every upsampler draws ``oversample`` x the
training count inside the selection (equal counts for all); one N-class classifier on
standardised 6-D samples gives LP(C) ± SE per upsampler, paired differences to the best and
pairwise AUCs; with a known truth (the demo galaxy) flow-vs-truth classifiers give AUCs and the
held-out log-likelihoods are compared with the true density's; linear MMD to the test particles;
figures; all staged in a temporary directory that replaces ``<run>/report/`` only on success.

Example:
    >>> result = run(load_job("jobs/solar-sphere.yaml"))  # needs trained models  # doctest: +SKIP
    upsampler             LP(C)     ± SE  LP(best)-LP     ± SE      MMD^2     ± SE
    ...
    report: .../runs/solar-sphere/report/index.html
    >>> sorted(result["classifier_test"])  # doctest: +SKIP
    ['best', 'classifier', 'differences', 'pairwise_auc', 'scores']

    Everything that can be refused is refused before any work:

    >>> from galmock.stages.plan import run as run_plan
    >>> job = load_job("jobs/demo.yaml", output=tmp_path / "run",
    ...                overrides=["galaxy.demo.n_particles=4000", "plan.target_particles=1000"])
    >>> _ = run_ingest(job), run_plan(job)
    >>> check_inputs(job)
    Traceback (most recent call last):
    ...
    galmock.errors.InputError: .../run/models/region-0000: trained model not found; ...
    >>> progress(RunLayout(job.run_dir))
    'no report yet'
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import dask
import numpy as np
from hats.pixel_math.healpix_shim import radec2pix

from galmock.atomic import atomic_directory
from galmock.config import JobConfig
from galmock.errors import ConfigError, InputError
from galmock.frames import galactocentric_frame, galactocentric_to_icrs
from galmock.gaia_errors import gaia_uncertainties
from galmock.layout import RunLayout
from galmock.locks import exclusive
from galmock.models import model_location
from galmock.observables import distance_modulus
from galmock.parallel.mpi import setup_rank
from galmock.plan import RegionPlan, read_plan
from galmock.regions import GalaxyParticles, RegionParticles
from galmock.sampling import expected_stars, support_radius
from galmock.seeds import derive_seed
from galmock.selection import load_catalog_spec, selection_mask
from galmock.stages.upsample import current_fingerprint, require_current_stars
from galmock.store import CATALOG_FORMAT, open_catalog, zarr_attrs
from galmock.validate import figures
from galmock.validate.classifier import (
    ClassifierSettings,
    TrainedClassifier,
    lp_difference,
    lp_scores,
    pairwise_auc,
    roc_auc,
    train_classifier,
)
from galmock.validate.mmd import linear_mmd, median_bandwidth
from galmock.validate.profile import DEFAULT_EDGES_KPC, radial_profile
from galmock.validate.report import DEFINITIONS, REPORT_FORMAT, summary_table, write_report_files
from galmock.validate.seams import internal_faces, seam_counts, seam_excess
from galmock.validate.truth import (
    DemoTruth,
    heldout_loglikelihood,
    mean_and_stderr,
    truth_draws,
    truth_for,
)
from galmock.validate.upsamplers import (
    Draws,
    FlowUpsampler,
    Selection,
    UpsamplerSpec,
    catalog_draws,
    enbid_draws,
    load_flows,
    parse_upsamplers,
)
from galmock.version import __version__

log = logging.getLogger("galmock.validate")

# Draws per upsampler converted to ICRS for the figures (the histograms need no more).
FIGURE_DRAWS = 100_000
# The Hess diagram's solar neighbourhood (kpc) and the sky map's HEALPix order (12288 pixels).
HESS_DISTANCE_KPC = 2.0
SKY_ORDER = 5


def _seed(job: JobConfig, *keys: object) -> int:
    return derive_seed(job.seed, "validate", *keys)


def check_inputs(job: JobConfig) -> tuple[RegionPlan, list[UpsamplerSpec]]:
    """Everything that can be refused before any work: holdout, upsamplers, models, catalogs."""
    layout = RunLayout(job.run_dir)
    plan = read_plan(layout.plan)
    if plan.holdout_fraction <= 0:
        raise ConfigError(
            f"{layout.plan}: plan.holdout_fraction = {plan.holdout_fraction}: validate "
            "needs held-out test particles; set plan.holdout_fraction (e.g. 0.5, the paper's "
            "1:1 split) and rerun plan and train"
        )
    specs = parse_upsamplers(job.validation.upsamplers, job.flows.kind)
    if job.flows.load is None and any(s.flow_kind == job.flows.kind for s in specs):
        for r in plan.regions:
            location = Path(model_location(job, plan, r.id))
            if not (location / "manifest.json").is_file():
                raise InputError(
                    f"{location}: trained model not found; validate.upsamplers lists "
                    f"{job.flows.kind!r} (= flows.kind), which uses the run's models: run "
                    "`galmock train` first"
                )
    return plan, specs


def run(job: JobConfig) -> dict[str, Any]:
    """Run the stage; returns the report (also in ``<run>/report/report.json``)."""
    with exclusive(RunLayout(job.run_dir).lock("validate"), "validate"):
        return _validate(job)


def _validate(job: JobConfig) -> dict[str, Any]:
    started = time.perf_counter()
    cfg = job.validation
    plan, specs = check_inputs(job)

    # torch threads and device, as train/upsample use them
    rank = setup_rank(job.flows.device, job.flows.threads)
    layout = RunLayout(job.run_dir)
    data = GalaxyParticles(layout.particles, plan)  # the test sets: the whole galaxy
    regions = RegionParticles(layout.training, plan)  # the flows' training sets
    attrs = data.store.attrs
    truth, truth_reason = truth_for(job, attrs)
    selection = Selection.within(plan, attrs.get("select_radius_kpc"), cfg.within_kpc)

    inside = selection.contains(data.pos)
    test_idx = np.flatnonzero(inside & data.held)
    train_idx = np.flatnonzero(inside & ~data.held)
    if cfg.max_test_particles is not None and len(test_idx) > cfg.max_test_particles:
        rng = np.random.default_rng(_seed(job, "test"))
        test_idx = np.sort(rng.choice(test_idx, cfg.max_test_particles, replace=False))
    if len(test_idx) < 10 or len(train_idx) < 10:
        raise InputError(f"{layout.plan}: only {len(test_idx)} test and "
                         f"{len(train_idx)} training particles in the selection")
    test_pos, test_vel = data.pos[test_idx], data.vel[test_idx]
    train_pos, train_vel = data.pos[train_idx], data.vel[train_idx]
    owned_train = np.bincount(plan.owner(train_pos), minlength=len(plan.regions))
    counts = [round(cfg.oversample * c) for c in owned_train]
    n_target = int(sum(counts))
    log.info("validate: %d test and %d training particles; %d draws per upsampler",
             len(test_idx), len(train_idx), n_target)

    draws: dict[str, Draws] = {}
    flows: dict[str, FlowUpsampler] = {}
    for spec in specs:
        t0 = time.perf_counter()
        if spec.kind == "flow":
            assert spec.flow_kind is not None
            models = load_flows(job, plan, spec.flow_kind, regions)
            for m in models:
                m.to(rank.device)
            flows[spec.label] = FlowUpsampler(spec.label, models, plan, selection)
            draws[spec.label] = flows[spec.label].draw(counts, _seed(job, spec.label))
        elif spec.kind == "enbid":
            fit = ~data.held & (plan.owner(data.pos) >= 0)
            draws[spec.label] = enbid_draws(data.pos[fit], data.vel[fit], n_target, selection,
                                            cfg.enbid_bandwidth_factor, _seed(job, "enbid"))
        else:
            draws[spec.label] = catalog_draws(spec, n_target, selection,
                                              _seed(job, "catalog", spec.label))
        draws[spec.label].info["seconds"] = round(time.perf_counter() - t0, 2)
        log.info("validate: %s: %d draws in %.1f s", spec.label, len(draws[spec.label]),
                 time.perf_counter() - t0)
    # Equal class sizes: the classifier's prior is then uniform, as LP(C) assumes.
    n_common = min(len(d) for d in draws.values())
    draws = {k: d.subset(n_common, _seed(job, "equalise", k)) for k, d in draws.items()}

    train6 = np.hstack([train_pos, train_vel])
    mean, scale = train6.mean(axis=0), train6.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)

    def standard(pos: np.ndarray, vel: np.ndarray) -> np.ndarray:
        return (np.hstack([pos, vel]) - mean) / scale

    z = {k: standard(d.pos, d.vel) for k, d in draws.items()}
    z_test = standard(test_pos, test_vel)
    settings = _classifier_settings(job)

    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "galmock_version": __version__,
        "job": {"name": job.name, "seed": job.seed, "validate": cfg.model_dump(mode="json"),
                "resolved": job.model_dump(mode="json", by_alias=True)},
        "selection": selection.describe(),
        "plan": {"kind": plan.kind, "regions": len(plan.regions),
                 "holdout_fraction": plan.holdout_fraction},
        "test_particles": len(test_idx),
        "training_particles": len(train_idx),
        "draws_per_upsampler": n_common,
        "standardisation": {"mean": mean.tolist(), "std": scale.tolist(),
                            "columns": ["x", "y", "z", "vx", "vy", "vz"],
                            "note": "of the training particles in the selection"},
        "upsamplers": {k: {**d.info, "draws": len(d)} for k, d in draws.items()},
        "units": {"positions": "kpc", "velocities": "km/s", "log_density": "ln((kpc km/s)^-3)",
                  "lp": "natural log of a probability"},
    }
    report["definitions"] = DEFINITIONS
    report["classifier_test"], clf = _classifier_test(z, z_test, settings)

    truth_samples: dict[str, np.ndarray] | None = None
    if truth is not None:
        report["truth"], truth_samples = _truth_tests(job, truth, selection, draws, flows, z,
                                                      standard, test_pos, test_vel, settings,
                                                      n_common, len(train_idx))
    else:
        report["truth"] = {"available": False, "reason": truth_reason}
        for label, flow in flows.items():  # the held-out likelihood needs no truth
            logp = flow.log_prob(test_pos, test_vel)
            ok = np.isfinite(logp)
            m, se = mean_and_stderr(logp[ok])
            report["upsamplers"][label]["heldout_loglikelihood"] = {
                "mean": m, "stderr": se, "test_particles_without_support": int((~ok).sum())}
    report["mmd"] = _mmd(z, z_test, truth_samples, job)

    with atomic_directory(layout.report) as staging:
        # One even stride through stars.zarr serves the seams and the radial profile.
        many, stars, source = _stars(job, plan, flows, selection)
        report["seams"] = _seams(job, plan, draws, data, truth, many, source)
        report["radial_profile"] = radial_profile_report(
            data.pos, data.store.load(["mass"])["mass"], plan, many, source)
        report["figures"] = []
        report["observables"], observed = _read_observables(job)
        if cfg.figures:
            label = "stars.zarr" if source.startswith("stars.zarr") else "production draws"
            report["figures"] = _figures(job, staging, draws, train_pos, train_vel, stars, label,
                                         clf, z_test, report)
            if observed is not None:
                report["figures"] += _observable_figures(job, staging, observed)
        report["wall_time_s"] = round(time.perf_counter() - started, 1)
        write_report_files(staging, report)
    print(summary_table(report))
    print(f"report: {layout.report / 'index.html'}")
    return report


def _classifier_settings(job: JobConfig, *keys: object) -> ClassifierSettings:
    cfg = job.validation
    return ClassifierSettings(
        hidden=tuple(cfg.classifier_hidden),
        learning_rate=cfg.classifier_learning_rate,
        batch_size=cfg.classifier_batch_size,
        validation_fraction=cfg.classifier_validation_fraction,
        patience_epochs=cfg.classifier_patience_epochs,
        max_epochs=cfg.classifier_max_epochs,
        seed=_seed(job, "classifier", *keys) % (2**31),
        device=cfg.classifier_device,
        threads=None,  # as flows.threads set them (setup_rank)
    )


def _classifier_test(
    z: dict[str, np.ndarray], z_test: np.ndarray, settings: ClassifierSettings
) -> tuple[dict[str, Any], TrainedClassifier | None]:
    if len(z) < 2:
        return {"skipped": "the classifier test needs at least two upsamplers"}, None
    t0 = time.perf_counter()
    clf = train_classifier(z, settings)
    scores = sorted(lp_scores(clf, z_test), key=lambda s: -s.mean)
    best = scores[0].label
    differences = {}
    for s in scores[1:]:
        d, se = lp_difference(clf, z_test, best, s.label)
        differences[s.label] = {"mean": d, "stderr": se,
                                "significance": d / se if se > 0 else math.inf}
    result = {
        "best": best,
        "scores": [{"label": s.label, "lp": s.mean, "stderr": s.stderr} for s in scores],
        "differences": differences,
        "pairwise_auc": {f"{a} vs {b}": auc for (a, b), auc in pairwise_auc(clf).items()},
        "classifier": {"labels": list(clf.labels), "best_epoch": clf.best_epoch,
                       "epochs": len(clf.history["validation_loss"]),
                       "seconds": round(time.perf_counter() - t0, 1),
                       "settings": asdict(settings)},
    }
    return result, clf


def _truth_tests(
    job: JobConfig, truth: DemoTruth, selection: Selection, draws: dict[str, Draws],
    flows: dict[str, FlowUpsampler], z: dict[str, np.ndarray],
    standard: Callable[[np.ndarray, np.ndarray], np.ndarray], test_pos: np.ndarray,
    test_vel: np.ndarray, settings: ClassifierSettings, n_common: int, n_train: int,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    cfg = job.validation
    n_truth = round((cfg.truth_oversample or cfg.oversample) * n_train)
    t0 = time.perf_counter()
    pos, vel, fraction, drawn = truth_draws(truth, selection.contains, n_truth,
                                            _seed(job, "truth"))
    z_truth = standard(pos, vel)
    true_logp = truth.log_prob(test_pos, test_vel)
    out: dict[str, Any] = {
        "available": True,
        "source": "demo galaxy (galmock.demo.DemoGalaxy.log_prob, exact)",
        "true_draws": len(pos),
        "true_draws_total": drawn,
        "selection_probability": fraction,
        "seconds_drawing": round(time.perf_counter() - t0, 2),
        "upsamplers": {},
    }
    for label, zs in z.items():
        m = min(len(zs), len(z_truth))
        clf = train_classifier({label: zs[:m], "truth": z_truth[:m]},
                               _classifier_settings(job, "truth", label))
        k = list(clf.labels).index(label)
        auc = roc_auc(clf.validation[label][:, k], clf.validation["truth"][:, k])
        entry: dict[str, Any] = {"auc": float(auc), "samples_per_class": m,
                                 "best_epoch": clf.best_epoch}
        if label in flows:
            entry["heldout_loglikelihood"] = heldout_loglikelihood(
                flows[label].log_prob(test_pos, test_vel), true_logp, fraction, drawn)
        out["upsamplers"][label] = entry
    return out, {"truth": z_truth}


def _mmd(
    z: dict[str, np.ndarray], z_test: np.ndarray, extra: dict[str, np.ndarray] | None,
    job: JobConfig,
) -> dict[str, Any]:
    width = median_bandwidth(z_test, next(iter(z.values())), seed=_seed(job, "mmd") % 2**32)
    out = {}
    for label, zs in {**z, **(extra or {})}.items():
        r = linear_mmd(zs, z_test, bandwidth=width, seed=_seed(job, "mmd", label) % 2**32)
        out[label] = {**r.to_dict(), "significance": r.significance}
    return out


def _stars(
    job: JobConfig, plan: RegionPlan, flows: dict[str, FlowUpsampler], selection: Selection,
) -> tuple[dict[str, np.ndarray] | None, dict[str, np.ndarray] | None, str]:
    """The production stars the seams, radial profile and figures look at: ``(many, few,
    source)``, ``many`` up to ``seam_stars`` positions, ``few`` up to ``figure_stars`` with
    velocities. An even stride through stars.zarr; when stars.zarr is magnitude-limited (a
    visibility-weighted subsample, not the galaxy's density), as many draws of the run's models,
    owned-volume tiled like upsample's and shared among the regions as its stars are."""
    cfg = job.validation
    attrs = zarr_attrs(RunLayout(job.run_dir).stars) or {}
    if attrs.get("magnitude_limit") is None:
        many = _read_stars(job, cfg.seam_stars, ("x", "y", "z"))
        few = _read_stars(job, cfg.figure_stars, ("x", "y", "z", "vx", "vy", "vz"))
        return many, few, "stars.zarr ({} stars, an even stride through the catalog)"
    flow = flows.get(job.flows.kind)
    if flow is None:  # _seams then says so; the radial profile has nothing to show
        return None, None, ""
    lam = expected_stars(plan.regions, job.upsample)
    counts = np.round(cfg.seam_stars * lam / lam.sum()).astype(np.int64)
    t0 = time.perf_counter()
    # Where upsample draws: the plan's space (not validate.within_kpc's selection), each region
    # cut at its farthest training particle as upsample cuts it.
    regions = RegionParticles(RunLayout(job.run_dir).training, plan)
    support = [support_radius(regions.particles(r.id).pos) for r in plan.regions]
    unlimited = FlowUpsampler(job.flows.kind, flow.models, plan, Selection.within(plan, None),
                              support)
    sample = unlimited.draw(counts.tolist(), _seed(job, "production"))
    log.info("validate: %d draws of the production models in %.1f s (stars.zarr is "
             "magnitude-limited)", len(sample), time.perf_counter() - t0)
    many = {c: sample.pos[:, k] for k, c in enumerate("xyz")}
    few_draws = sample.subset(min(cfg.figure_stars, len(sample)), _seed(job, "production-few"))
    few = {**{c: few_draws.pos[:, k] for k, c in enumerate("xyz")},
           **{c: few_draws.vel[:, k] for k, c in enumerate(("vx", "vy", "vz"))}}
    return many, few, (f"{{}} draws of the {job.flows.kind} models as upsample draws them "
                       "(stars.zarr holds only the visible stars)")


def _seams(
    job: JobConfig, plan: RegionPlan, draws: dict[str, Draws], data: GalaxyParticles,
    truth: DemoTruth | None, many: dict[str, np.ndarray] | None, source: str,
) -> dict[str, Any]:
    """Seams on the production stars (``many``, see :func:`_stars`; ``source`` describes them)
    when there are any, else on the run's flow draws: per face the star density's step, its
    excess over a seamless reference (as many true draws where the truth is known, else the
    particles) and the comparison with the particles."""
    faces = internal_faces(plan)
    if not faces:
        note = ("no internal faces (a single region)" if len(plan.regions) == 1
                else "no internal faces (sphere plan)")
        return {"faces": [], "note": note}
    if many is not None:
        pos = np.column_stack([many["x"], many["y"], many["z"]])
        source = source.format(len(pos))
    elif job.flows.kind in draws:
        pos = draws[job.flows.kind].pos
        source = f"validation draws of {job.flows.kind}"
    else:
        return {"faces": [], "note": "no stars.zarr and no draws of flows.kind"}
    width = job.validation.seam_width_kpc
    if truth is not None:
        reference = truth.sample(len(pos), np.random.default_rng(_seed(job, "seam-reference")))[0]
        reference_name = f"{len(reference)} draws of the true density"
    else:
        reference, reference_name = data.pos, f"the {len(data.pos)} particles"
    rows = [
        {**counts, **step}
        for counts, step in zip(seam_counts(faces, pos, data.pos, width),
                                seam_excess(faces, pos, reference, width), strict=True)
    ]
    return {"faces": rows, "source": source, "reference": reference_name, "width_kpc": width}


def radial_profile_report(
    pos: np.ndarray, mass: np.ndarray, plan: RegionPlan, stars: dict[str, np.ndarray] | None,
    source: str,
) -> dict[str, Any]:
    """Each galactocentric shell's share of ``stars`` (see :func:`_stars`; ``source`` describes
    them; or None) against the share of the mass of the particles (``pos``, ``mass``) the plan
    covers: all of them for a k-d plan, a sphere plan's ball, where its stars are
    (:mod:`galmock.validate.profile`)."""
    if stars is None:
        return {"shells": [], "note": "no stars.zarr, or a magnitude-limited one and flows.kind "
                "not among validate.upsamplers (its draws stand in for the stars)"}
    star_r = np.sqrt(stars["x"] ** 2 + stars["y"] ** 2 + stars["z"] ** 2)
    mass = np.asarray(mass)
    particle_r = np.sqrt((pos**2).sum(axis=1))
    edges: Any = DEFAULT_EDGES_KPC  # a k-d plan covers every particle
    if plan.kind == "sphere":
        covered = plan.owner(pos) >= 0
        particle_r, mass = particle_r[covered], mass[covered]
        # A ball spans a few kpc of galactocentric radius: 1 kpc shells across it (the
        # whole-galaxy edges would put it in two shells of very different widths).
        edges = np.arange(math.floor(particle_r.min()), math.floor(particle_r.max()) + 2)
    shells = radial_profile(particle_r, mass, star_r, edges)
    worst = max(shells, key=lambda row: abs(row["z"]))
    return {"shells": shells, "source": source.format(len(star_r)),
            "worst": {k: worst[k] for k in ("r_lo_kpc", "r_hi_kpc", "ratio", "z")}}


def _read_stars(
    job: JobConfig, rows: int, columns: tuple[str, ...]
) -> dict[str, np.ndarray] | None:
    """An even stride of about ``rows`` rows of ``<run>/stars.zarr`` through Dask, or None."""
    path = RunLayout(job.run_dir).stars
    if not path.exists():
        return None
    cat = open_catalog(path)
    require_current_stars(job, cat)
    step = max(1, math.ceil(len(cat) / rows))
    lazy = cat.to_dask(list(columns))
    try:
        (cols,) = dask.compute({c: a[::step] for c, a in lazy.items()})
    except (ValueError, RuntimeError) as err:  # a chunk failing its CRC32C or its decoding
        raise InputError(f"{path}: a chunk is damaged: {err}; rerun `galmock upsample`") from None
    return {c: np.asarray(v, dtype=np.float64) for c, v in cols.items()}


def _figures(
    job: JobConfig, staging: Path, draws: dict[str, Draws], train_pos: np.ndarray,
    train_vel: np.ndarray, stars: dict[str, np.ndarray] | None, stars_label: str,
    clf: TrainedClassifier | None, z_test: np.ndarray,
    report: dict[str, Any],
) -> list[dict[str, str]]:
    """Every PNG into ``staging``; returns ``[{"file", "title"}]`` in display order."""
    t0 = time.perf_counter()
    frame = galactocentric_frame(**job.observer.model_dump())

    def icrs(pos: np.ndarray, vel: np.ndarray) -> dict[str, np.ndarray]:
        return galactocentric_to_icrs(*pos.T, *vel.T, frame=frame, galactic=False)

    models = {k: d.subset(FIGURE_DRAWS, _seed(job, "figure", k)) for k, d in draws.items()}
    if stars is not None:
        pos = np.column_stack([stars["x"], stars["y"], stars["z"]])
        vel = np.column_stack([stars["vx"], stars["vy"], stars["vz"]])
        models[stars_label] = Draws(stars_label, pos, vel)
    sky = {k: icrs(d.pos, d.vel) for k, d in models.items()}
    parents = icrs(train_pos, train_vel)
    out = []

    def add(name: str, title: str) -> None:
        out.append({"file": name, "title": title})

    spec = load_catalog_spec("galaxyflow-window")

    def window(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keep = selection_mask(spec.selection, cols)
        return {c: v[keep] for c, v in cols.items()}

    in_window = {k: window(c) for k, c in sky.items()}
    parents_window = window(parents)
    if len(parents_window["ra"]) and all(len(c["ra"]) for c in in_window.values()):
        figures.pm_histograms(staging / "pm-window.png", in_window, parents_window,
                              f"proper motions in the {spec.name} window "
                              f"({len(parents_window['ra'])} parent particles)")
        add("pm-window.png", "Proper motions in the sky window, parent particles overlaid "
            "(paper Fig. 3)")
    for k, cols in sky.items():
        name = f"corner-{_slug(k)}.png"
        figures.corner_plot(staging / name, cols, parents, k)
        add(name, f"ICRS corner plot: {k} vs training particles (paper Figs. 4-5)")
    figures.vxvy_maps(staging / "vxvy.png", {k: d.vel for k, d in models.items()}, train_vel)
    add("vxvy.png", "Galactocentric (vx, vy) maps (paper Fig. 1)")
    if clf is not None:
        figures.classifier_histograms(staging / "classifier.png", list(clf.labels),
                                      clf.validation, clf.log_proba(z_test),
                                      "classifier outputs (lines: validation draws; "
                                      "points: test particles)")
        add("classifier.png", "Classifier outputs with the test particles overlaid "
            "(paper Fig. 6)")
    seams = report.get("seams", {})
    if seams.get("faces"):
        figures.seam_figure(staging / "seams.png", seams["faces"], seams["source"])
        add("seams.png", "Seam diagnostics across internal region faces")
    profile = report.get("radial_profile", {})
    if profile.get("shells"):
        figures.radial_profile_figure(staging / "radial.png", profile["shells"],
                                      profile["source"])
        add("radial.png", "Radial profile: stars vs particle mass per galactocentric shell")
    log.info("validate: %d figure(s) in %.1f s", len(out), time.perf_counter() - t0)
    return out


# Columns of catalog.zarr the observables' figures read.
_OBSERVED = ("phot_g_mean_mag", "phot_g_mean_mag_true", "bp_rp", "distance", "l", "b",
             "parallax_error", "pmra_error", "phot_g_mean_mag_error")


def _read_observables(job: JobConfig) -> tuple[dict[str, Any], dict[str, np.ndarray] | None]:
    """The visible stars (true G within ``observables.magnitude_limit``) of an even stride of
    at most ``validate.observable_stars`` rows of ``<run>/catalog.zarr``, and their summary;
    None when there is no current catalog with observables."""
    path = RunLayout(job.run_dir).catalog_zarr
    if not job.observables.enabled:
        return {"note": "observables.enabled is false"}, None
    if not path.exists():
        return {"note": "no catalog.zarr (run `galmock convert`)"}, None
    cat = open_catalog(path, format=CATALOG_FORMAT)
    if any(c not in cat.columns for c in _OBSERVED):
        return {"note": f"{path.name} lacks the observables (convert.columns or an older "
                        "catalog): rerun `galmock convert`"}, None
    source = cat.attrs.get("source", {}).get("attrs", {}).get("fingerprint")
    if source is not None and source != current_fingerprint(job):
        return {"note": f"{path.name} was converted from another stars.zarr: rerun "
                        "`galmock convert`"}, None
    step = max(1, math.ceil(len(cat) / job.validation.observable_stars))
    lazy = cat.to_dask(list(_OBSERVED))
    try:
        (cols,) = dask.compute({c: a[::step] for c, a in lazy.items()})
    except (ValueError, RuntimeError) as err:  # a chunk failing its CRC32C or its decoding
        raise InputError(f"{path}: a chunk is damaged: {err}; rerun `galmock convert`") from None
    cols = {c: np.asarray(v, dtype=np.float64) for c, v in cols.items()}
    limit = job.observables.magnitude_limit
    g = cols["phot_g_mean_mag_true"]
    visible = np.isfinite(g) & (g <= limit if limit is not None else True)
    summary = {
        "magnitude_limit_g": limit,
        "stars_read": len(g),
        "stride": step,
        "with_photometry": int(np.isfinite(g).sum()),
        "visible": int(visible.sum()),
        "visible_fraction": float(visible.mean()) if len(g) else None,
        "sampling_fraction": job.upsample.sampling_fraction,
    }
    return summary, {c: v[visible] for c, v in cols.items()}


def _observable_figures(job: JobConfig, staging: Path, stars: dict[str, np.ndarray]
                        ) -> list[dict[str, str]]:
    """Hess diagram of the solar neighbourhood, counts per G, errors against G (with pygaia's
    curves), and the visible stars' HEALPix sky map."""
    limit = job.observables.magnitude_limit
    cut = f"G <= {limit:g}" if limit is not None else "every star with photometry"
    sample = (f"{len(stars['l']):,} stars ({cut}; sampling_fraction "
              f"{job.upsample.sampling_fraction:g}, catalog stride)")
    out = []
    near = stars["distance"] < HESS_DISTANCE_KPC
    abs_g = stars["phot_g_mean_mag"][near] - distance_modulus(stars["distance"][near])
    figures.hess_diagram(staging / "hess.png", stars["bp_rp"][near], abs_g,
                         f"Hess diagram within {HESS_DISTANCE_KPC:g} kpc of the Sun: "
                         f"{int(near.sum()):,} stars ({cut}, observed)")
    out.append({"file": "hess.png", "title": "Hess diagram of the solar neighbourhood "
                f"(within {HESS_DISTANCE_KPC:g} kpc)"})
    figures.counts_per_g(staging / "counts-g.png", stars["phot_g_mean_mag"], limit,
                         f"observed G of {sample}")
    out.append({"file": "counts-g.png", "title": "Star counts per G bin"})
    grid = np.linspace(4.0, 21.0, 69)
    reference = gaia_uncertainties(grid, grid, grid, np.full_like(grid, 5000.0),
                                   np.full_like(grid, 4.5), release=job.observables.release)
    names = ("parallax_error", "pmra_error", "phot_g_mean_mag_error")
    figures.errors_vs_g(staging / "errors-g.png", stars["phot_g_mean_mag_true"],
                        {n: stars[n] for n in names},
                        {n: (grid, getattr(reference, n)) for n in names},
                        f"uncertainties vs true G ({job.observables.release}): {sample}")
    out.append({"file": "errors-g.png", "title": "Gaia uncertainties against G, pygaia's "
                "curves overlaid"})
    npix = 12 * 4**SKY_ORDER
    counts = np.bincount(radec2pix(SKY_ORDER, stars["l"], stars["b"]), minlength=npix)
    figures.sky_density(staging / "sky.png", counts,
                        lambda l_deg, b_deg: radec2pix(SKY_ORDER, l_deg, b_deg),
                        f"stars per HEALPix pixel (order {SKY_ORDER}, Galactic): {sample}")
    out.append({"file": "sky.png", "title": "Sky density of the visible catalog (HEALPix, "
                "Galactic Mollweide)"})
    return out


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in label)


def progress(layout: RunLayout) -> str:
    """What the run directory says about validate (for ``galmock status``)."""
    return "report written" if (layout.report / "report.json").is_file() else "no report yet"
