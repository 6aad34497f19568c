"""Job configuration: defaults, validation errors (file, key path, value, line), overrides."""

from pathlib import Path

import pytest

from galmock.config import default_config, load_job
from galmock.errors import ConfigError

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


def test_every_problem_is_reported(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, "seed: -1\nflows:\n  rk4_steps: 0\nbogus: 1\n"))
    assert msg.count("\n  ") == 3


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
