"""Job configuration: defaults, validation errors (file, key path, value, line), overrides."""

from pathlib import Path

import pytest

from galmock.config import MOVED_KEYS, FlowsConfig, default_config, load_job
from galmock.errors import ConfigError
from galmock.flows import family, family_names

JOBS = sorted(Path(__file__).parent.parent.joinpath("jobs").glob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def error_of(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_job(path, overrides or [])
    return str(info.value)


@pytest.mark.parametrize("job", JOBS, ids=[p.name for p in JOBS])
def test_shipped_jobs_load(job: Path) -> None:
    cfg = load_job(job)
    assert cfg.name == job.stem


def test_shipped_jobs_exist() -> None:
    assert {"demo.yaml", "solar-sphere.yaml"} <= {p.name for p in JOBS}


def test_empty_job_gets_defaults(tmp_path: Path) -> None:
    cfg = load_job(write(tmp_path, ""))
    defaults = default_config()
    assert cfg.galaxy.demo.n_particles == defaults["galaxy"]["demo"]["n_particles"]
    # astropy Galactocentric v4.0 observer
    assert cfg.observer.galcen_distance_kpc == 8.122
    assert cfg.observer.z_sun_kpc == 0.0208
    assert cfg.observer.galcen_v_sun_kms == (12.9, 245.6, 7.78)
    x, y, z = cfg.observer.sun_position_kpc
    assert x == pytest.approx(-8.122, abs=1e-4) and y == 0 and z == 0.0208
    assert cfg.run_dir == (Path.cwd() / "runs" / "galmock-job").resolve()


def test_unknown_key_names_file_path_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "name: t\ngalaxy:\n  demo:\n    n_particels: 10\n")
    msg = error_of(path)
    assert str(path) in msg
    assert "galaxy.demo.n_particels = 10 (line 4): unknown key" in msg


def test_wrong_type_names_value(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, "seed: banana\n"))
    assert "seed = 'banana' (line 1)" in msg and "integer" in msg


def test_bad_value_names_value(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, "plan:\n  kind: octree\n  margin_kpc: -1\n"))
    assert "plan.kind = 'octree' (line 2)" in msg and "'kdtree' or 'sphere'" in msg
    assert "plan.margin_kpc = -1 (line 3)" in msg and "greater than or equal to 0" in msg


def test_bad_observables_name_key_value_and_line(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, "observables:\n  release: dr2\n  dust:\n"
                                   "    a0_per_kpc: -0.5\n    scale_height_kpc: 0\n"))
    assert "observables.release = 'dr2' (line 2)" in msg
    assert "observables.dust.a0_per_kpc = -0.5 (line 4)" in msg
    assert "greater than or equal to 0" in msg
    assert "observables.dust.scale_height_kpc = 0 (line 5)" in msg
    msg = error_of(write(tmp_path, "upsample:\n  mode: fixed\n"))
    assert "observables.enabled needs upsample.mode: imf" in msg


def test_every_problem_is_reported(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, "seed: -1\nflows:\n  cnf:\n    rk4_steps: 0\nbogus: 1\n"))
    assert msg.count("\n  ") == 3
    assert "flows.cnf.rk4_steps = 0 (line 4): Input should be greater than 0" in msg


def test_unknown_unit(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, "galaxy:\n  units:\n    length: furlong/fortnight\n"))
    assert "galaxy.units.length = 'furlong/fortnight' (line 3): unknown unit" in msg
    msg = error_of(write(tmp_path, "galaxy:\n  units:\n    length: km/s\n"))
    assert "galaxy.units.length = 'km/s' (line 3): unit 'km/s' is not a length unit" in msg
    msg = error_of(write(tmp_path, "galaxy:\n  units:\n    velocity: parsecz\n"))
    assert "unknown unit 'parsecz'" in msg


def test_short_vector(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, "observer:\n  galcen_v_sun_kms: [1, 2]\n"))
    assert "observer.galcen_v_sun_kms (line 2): too few values" in msg


def test_not_a_mapping_and_bad_yaml(tmp_path: Path) -> None:
    assert "must be a mapping" in error_of(write(tmp_path, "- a\n- b\n"))
    assert "not valid YAML" in error_of(write(tmp_path, "a: [1, 2\n"))
    with pytest.raises(ConfigError, match="cannot read job file"):
        load_job(tmp_path / "missing.yaml")


def test_set_overrides_are_typed_and_validated(tmp_path: Path) -> None:
    path = write(tmp_path, "name: t\n")
    cfg = load_job(
        path,
        ["galaxy.demo.n_particles=1234", "plan.kind=sphere", "observer.galcen_v_sun_kms=[1,2,3]"],
    )
    assert cfg.galaxy.demo.n_particles == 1234
    assert cfg.plan.kind == "sphere"
    assert cfg.observer.galcen_v_sun_kms == (1.0, 2.0, 3.0)
    msg = error_of(path, ["galaxy.demo.n_particles=-5"])
    assert "galaxy.demo.n_particles = -5 (from --set galaxy.demo.n_particles=-5)" in msg
    assert "greater than 0" in msg
    assert "galaxy.nope = 3 (from --set galaxy.nope=3): unknown key" in error_of(
        path, ["galaxy.nope=3"]
    )
    assert "seed is not a section" in error_of(path, ["seed.x=1"])
    assert "expected key.path=value" in error_of(path, ["seed"])


def test_output_override(tmp_path: Path) -> None:
    cfg = load_job(write(tmp_path, "output: somewhere\n"), output=tmp_path / "run")
    assert cfg.run_dir == tmp_path / "run"


def test_resolved_yaml_round_trips(tmp_path: Path) -> None:
    cfg = load_job(JOBS[0], ["seed=7"])
    again = load_job(write(tmp_path, cfg.to_yaml()))
    assert again == cfg


def test_flat_flows_keys_of_old_job_files_name_their_new_place(tmp_path: Path) -> None:
    path = write(tmp_path, "name: old\nflows:\n  kind: maf\n  rk4_steps: 4\n  transforms: 3\n"
                           "  spline_bins: 6\n  learning_rate: 1.0e-2\n  radial_c: 1.1\n")
    msg = error_of(path, ["flows.ensemble_size=2"])
    assert "flows.rk4_steps = 4 (line 4): moved to flows.cnf.rk4_steps" in msg
    assert ("flows.transforms = 3 (line 5): moved to flows.maf.transforms and "
            "flows.nsf.transforms") in msg
    assert "flows.spline_bins = 6 (line 6): moved to flows.nsf.spline_bins" in msg
    assert "flows.learning_rate = 0.01 (line 7): moved to flows.training.learning_rate" in msg
    assert "flows.radial_c = 1.1 (line 8): moved to flows.training.radial_c" in msg
    assert ("flows.ensemble_size = 2 (from --set flows.ensemble_size=2): moved to "
            "flows.training.ensemble_size") in msg
    # Every moved key is named, each once, and nothing else is wrong with the file.
    assert msg.count("\n  ") == 6
    assert all(old[0] == "flows" and len(old) == 2 for old in MOVED_KEYS)


def test_family_sections_are_checked_and_filled_from_defaults(tmp_path: Path) -> None:
    cfg = load_job(write(tmp_path, "flows:\n  kind: nsf\n  nsf:\n    spline_bins: 12\n"))
    assert cfg.flows.options() == family("nsf").parse_options({"spline_bins": 12})
    assert cfg.flows.options().transforms == default_config()["flows"]["nsf"]["transforms"]
    assert cfg.flows.cnf.rk4_steps == default_config()["flows"]["cnf"]["rk4_steps"]  # all there
    msg = error_of(write(tmp_path, "flows:\n  kind: glow\n  nsf:\n    bins: 4\n  maf: 3\n"))
    assert "flows.kind = 'glow' (line 2): unknown flow kind 'glow' (known: cnf, maf, nsf" in msg
    assert "flows.nsf.bins = 4 (line 4): unknown key" in msg
    assert "flows.maf = 3 (line 5)" in msg
    cfg = load_job(write(tmp_path, ""), ["flows.cnf.rk4_steps=3"])
    assert cfg.flows.cnf.rk4_steps == 3


def test_defaults_file_holds_every_builtin_family_default() -> None:
    flows = default_config()["flows"]
    for name in family_names():
        assert flows[name] == dict(family(name).defaults), name


def test_recipe_is_what_makes_a_model_stale() -> None:
    cfg = FlowsConfig.from_defaults(kind="maf")
    recipe = cfg.recipe()
    assert list(recipe) == ["kind", "hidden_features", "hidden_layers", "activation", "maf",
                            "training"]
    assert recipe["training"] == cfg.training.model_dump()
    assert cfg.stale_keys(recipe) == []
    # Runtime settings and other families' options do not make a model stale...
    for change in ({"device": "cpu", "threads": 3, "chunk_rows": 10, "compile": True,
                    "checkpoint_every_epochs": 1, "load": "x"}, {"nsf": {"spline_bins": 3}},
                   {"cnf": {"rk4_steps": 3}}):
        assert FlowsConfig.from_defaults(kind="maf", **change).stale_keys(recipe) == []
    # ...every recipe setting does.
    assert FlowsConfig.from_defaults(kind="maf", maf={"transforms": 2}).stale_keys(recipe) == [
        "maf.transforms"
    ]
    assert FlowsConfig.from_defaults(
        kind="maf", training={"radial_c": 1.01, "ensemble_size": 3}
    ).stale_keys(recipe) == ["training.radial_c", "training.ensemble_size"]
    assert "kind" in FlowsConfig.from_defaults(kind="nsf").stale_keys(recipe)


def test_artifacts_recorded_with_flat_flows_settings_are_still_current() -> None:
    cfg = FlowsConfig.from_defaults(kind="cnf")
    flat = {k: v for k, v in cfg.model_dump(mode="json").items()
            if k not in ("training", *family_names())}
    flat.update(cfg.training.model_dump(mode="json"), rk4_steps=cfg.options().rk4_steps,
                transforms=5, spline_bins=8)
    assert cfg.stale_keys(flat) == []
    assert cfg.stale_keys({**flat, "rk4_steps": 4}) == ["cnf.rk4_steps"]
    assert cfg.stale_keys({**flat, "max_epochs": 4}) == ["training.max_epochs"]
