"""Model artifacts (safetensors + manifest) and the name registry: round trips and refusals."""

import hashlib
import json
import pickle
import re
import shutil
from pathlib import Path

import fsspec
import numpy as np
import pytest
import safetensors.torch
import torch

import galmock
from galmock.config import FlowsConfig
from galmock.errors import InputError
from galmock.flows import registry
from galmock.flows.artifact import ARTIFACT_FORMAT, data_sha256, load_artifact, save_artifact
from galmock.flows.ensemble import FlowEnsemble
from galmock.flows.phase_space import PhaseSpaceFlow
from galmock.flows.preprocess import PositionPreprocessing, VelocityPreprocessing
from galmock.flows.training import fit_ensemble

CENTRE = (-8.122, 0.0, 0.0208)


# Small tensors: one torch thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def particles(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    d = rng.normal(0, 1.0, (3 * n, 3))
    d = d[np.linalg.norm(d, axis=1) < 2.0][:n]
    return np.asarray(CENTRE) + d, rng.normal([0, 220, 0], 30, (n, 3))


def config(kind: str = "cnf") -> FlowsConfig:
    return FlowsConfig.from_defaults(
        kind=kind, hidden_features=8, hidden_layers=2, cnf={"rk4_steps": 3},
        maf={"transforms": 2}, nsf={"transforms": 2, "spline_bins": 4},
        training={"patience_epochs": 2, "max_epochs": 2, "batches_per_epoch": 2,
                  "ensemble_size": 2},
        device="cpu",
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[FlowEnsemble, Path, np.ndarray, np.ndarray]:
    pos, vel = particles()
    path = tmp_path_factory.mktemp("artifact") / "region-0000"
    cfg = config()
    ensemble = fit_ensemble(pos, vel, cfg.spec(), cfg.training, 3, CENTRE, 2.0, artifact=path,
                            runtime=cfg.runtime())
    return ensemble, path, pos, vel


@pytest.fixture
def copy(trained, tmp_path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(trained[1], target)
    return target


def edit_manifest(path: Path, change) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_round_trip_gives_identical_densities_and_samples(trained) -> None:
    ensemble, path, pos, vel = trained
    loaded = load_artifact(path)
    assert torch.equal(loaded.log_prob(pos, vel), ensemble.log_prob(pos, vel))
    a = ensemble.sample(3000, torch.Generator().manual_seed(4))
    b = loaded.sample(3000, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]


def test_manifest_records_provenance(trained) -> None:
    ensemble, path, pos, vel = trained
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == ARTIFACT_FORMAT and manifest["kind"] == "cnf"
    assert manifest["galmock_version"] == galmock.__version__
    assert manifest["architecture"]["velocity"] == ensemble.members[0].velocity.architecture()
    assert manifest["region"] == {"centre": list(CENTRE), "r_max": 2.0,
                                  "v_max": float(np.linalg.norm(vel, axis=1).max())}
    pre = PositionPreprocessing.from_dict(manifest["preprocessing"]["position"])
    assert pre == ensemble.members[0].position_pre and pre.c == 1.000001
    training = manifest["training"]
    assert training["particles"] == len(pos)
    assert training["data_sha256"] == data_sha256(pos, vel)
    assert training["device"] == "cpu" and training["wall_time_s"] > 0
    assert training["config"] == config().recipe()
    assert training["config"]["kind"] == "cnf" and training["config"]["cnf"] == {"rk4_steps": 3}
    for k, member in enumerate(manifest["members"]):
        data = (path / member["file"]).read_bytes()
        assert member["file"] == f"member-{k:02d}.safetensors"
        assert member["sha256"] == hashlib.sha256(data).hexdigest()
        assert set(member["best_validation_loss"]) == {"position", "velocity"}
        assert member["epochs"]["position"]["main"] >= 1
        assert member["tensors"]["position.field.net.0.weight"] == {"shape": [8, 4],
                                                                    "dtype": "float32"}


def test_tampered_weights_are_refused(copy) -> None:
    weights = copy / "member-01.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"member-01\.safetensors: sha256 .* changed or is "):
        load_artifact(copy)


def test_pickled_weights_are_never_unpickled(copy) -> None:
    # Even with a matching checksum, a pickle is not a safetensors file and is not executed.
    weights = copy / "member-00.safetensors"
    weights.write_bytes(pickle.dumps({"position.field.net.0.weight": [0.0]}))
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    edit_manifest(copy, lambda m: m["members"][0].update(sha256=digest))
    with pytest.raises(InputError, match=r"member-00\.safetensors: not a valid safetensors file"):
        load_artifact(copy)


def test_edited_kind_is_refused(copy) -> None:
    edit_manifest(copy, lambda m: m.update(kind="maf"))
    with pytest.raises(InputError, match=r"manifest\.json: kind 'maf' does not match"):
        load_artifact(copy)

    def both(m):
        m["kind"] = "maf"
        m["architecture"]["position"]["kind"] = m["architecture"]["velocity"]["kind"] = "maf"

    edit_manifest(copy, both)
    with pytest.raises(InputError, match=r"manifest\.json: invalid architecture"):
        load_artifact(copy)


def test_edited_architecture_is_refused(copy) -> None:
    edit_manifest(copy, lambda m: m["architecture"]["velocity"].update(hidden_features=16))
    with pytest.raises(InputError, match=r"manifest\.json: member member-00\.safetensors: "
                                         r"tensors do not match the architecture: changed "
                                         r"velocity\.field\.net\.0\.bias"):
        load_artifact(copy)


def test_edited_tensor_shapes_are_refused(copy) -> None:
    def change(m):
        m["members"][1]["tensors"]["position.field.net.2.weight"]["shape"] = [8, 9]

    edit_manifest(copy, change)
    with pytest.raises(InputError, match=r"tensors do not match the architecture: .*2\.weight"):
        load_artifact(copy)


def test_weights_that_disagree_with_the_manifest_are_refused(copy) -> None:
    # A consistent manifest for a file with one tensor missing: checksum fine, names not.
    weights = copy / "member-00.safetensors"
    tensors = safetensors.torch.load_file(str(weights))
    del tensors["velocity.field.net.4.bias"]
    weights.write_bytes(safetensors.torch.save(tensors))
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    edit_manifest(copy, lambda m: m["members"][0].update(sha256=digest))
    with pytest.raises(InputError, match=r"tensors differ from the manifest: missing "
                                         r"velocity\.field\.net\.4\.bias"):
        load_artifact(copy)


@pytest.mark.parametrize("fmt", ["galmock.flows/1", "galmock.flows/3", None])
def test_other_format_versions_are_refused(copy, fmt) -> None:
    edit_manifest(copy, lambda m: m.update(format=fmt))
    with pytest.raises(InputError, match=r"manifest\.json: unsupported model format"):
        load_artifact(copy)


def test_missing_or_broken_files_are_refused(copy, tmp_path) -> None:
    with pytest.raises(InputError, match="cannot read the model manifest"):
        load_artifact(tmp_path / "nowhere")
    (copy / "member-01.safetensors").unlink()
    with pytest.raises(InputError, match=r"member-01\.safetensors: cannot read model weights"):
        load_artifact(copy)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_artifact(copy)


def untrained(kind: str) -> FlowEnsemble:
    pos, vel = particles()
    torch.manual_seed(0)
    spec = config(kind).spec()
    members = [
        PhaseSpaceFlow(spec.build(3, 0), spec.build(3, 3),
                       PositionPreprocessing.fit(pos, CENTRE, 2.0), VelocityPreprocessing.fit(vel),
                       400.0)
        for _ in range(2)
    ]
    return FlowEnsemble(members)


def test_every_family_round_trips(flow_kind, tmp_path) -> None:
    pos, vel = particles(seed=1)
    ensemble = untrained(flow_kind)
    save_artifact(ensemble, tmp_path / flow_kind)
    loaded = load_artifact(tmp_path / flow_kind)
    assert loaded.kind == flow_kind
    assert torch.equal(loaded.log_prob(pos, vel), ensemble.log_prob(pos, vel))


def test_changed_autoregressive_masks_are_refused(tmp_path) -> None:
    save_artifact(untrained("maf"), tmp_path / "maf")
    weights = tmp_path / "maf" / "member-00.safetensors"
    tensors = safetensors.torch.load_file(str(weights))
    name = "position.flow.transform.transforms.0.hyper.0.mask"
    tensors[name] = torch.ones_like(tensors[name])  # would break the autoregressive structure
    weights.write_bytes(safetensors.torch.save(tensors))
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    edit_manifest(tmp_path / "maf", lambda m: m["members"][0].update(sha256=digest))
    with pytest.raises(InputError, match=rf"buffer {name} differs"):
        load_artifact(tmp_path / "maf")


def test_save_replaces_an_existing_artifact(trained, tmp_path) -> None:
    target = tmp_path / "model"
    save_artifact(untrained("maf"), target)
    save_artifact(trained[0], target)
    assert load_artifact(target).kind == "cnf"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporaries left


def test_loads_from_fsspec_urls(trained) -> None:
    ensemble, path, pos, vel = trained
    fs = fsspec.filesystem("memory")
    for f in path.iterdir():
        fs.pipe(f"/models/r0/{f.name}", f.read_bytes())
    for url in (f"file://{path}", "memory://models/r0"):
        loaded = load_artifact(url)
        assert torch.equal(loaded.log_prob(pos, vel), ensemble.log_prob(pos, vel))


def test_registry(trained, tmp_path, monkeypatch) -> None:
    ensemble, path, pos, vel = trained
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    assert registry.registry_path() == tmp_path / "home" / ".config" / "galmock" / "models.json"
    monkeypatch.setenv(registry.ENV_VAR, str(tmp_path / "models.json"))
    assert registry.list_models() == []

    entry = registry.register("solar-cnf", path)
    assert entry.location == str(path.resolve())
    assert [e.name for e in registry.list_models()] == ["solar-cnf"]
    assert registry.resolve("solar-cnf") == str(path.resolve())
    assert registry.resolve(str(path)) == str(path.resolve())  # a plain path works too
    assert registry.resolve("memory://x/y") == "memory://x/y"
    assert registry.describe("solar-cnf")["kind"] == "cnf"
    model = registry.load("solar-cnf", config().runtime())
    assert torch.equal(model.log_prob(pos, vel), ensemble.log_prob(pos, vel))
    assert model.members[0].chunk_rows == 16384 and model.members[0].compile is False

    with pytest.raises(InputError, match=r"neither a registered model .*solar-cnf"):
        registry.resolve("lunar-cnf")
    with pytest.raises(InputError, match="cannot read the model manifest"):
        registry.register("empty", tmp_path)
    shutil.copytree(path, tmp_path / "elsewhere")
    with pytest.raises(InputError, match="already registered"):
        registry.register("solar-cnf", tmp_path / "elsewhere")
    assert registry.register("solar-cnf", tmp_path / "elsewhere", overwrite=True).location == str(
        tmp_path / "elsewhere"
    )
    with pytest.raises(InputError, match="use letters"):
        registry.register("bad name", path)
    registry.unregister("solar-cnf")
    assert registry.list_models() == []
    (tmp_path / "models.json").write_text("[]")
    with pytest.raises(InputError, match="not a galmock model registry"):
        registry.list_models()


def test_no_pickle_based_loading_in_the_package() -> None:
    source = Path(galmock.__file__).parent
    for file in source.glob("flows/*.py"):
        text = file.read_text()
        assert not re.search(r"(?<!safetensors\.)torch\.load\(|import pickle", text), file
