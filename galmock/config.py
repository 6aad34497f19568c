"""Job configuration: one typed model per section, loaded from YAML over ``defaults.yaml``.

Every default lives in ``galmock/defaults.yaml``; the models here carry only types and
constraints. A job file overrides any subset of the defaults, ``--set key.path=value`` overrides
the file, and the merged result is validated in one go: an unknown key, a wrong type or a bad
value raises :class:`ConfigError` naming the file, the key path, the value and the line.

Example:
    >>> job = load_job("jobs/demo.yaml", overrides=["galaxy.demo.n_particles=1000"])
    >>> job.galaxy.demo.n_particles
    1000
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import astropy.units as u
import yaml
from dask.utils import parse_bytes
from pydantic import (
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails

from galmock.errors import ConfigError
from galmock.flows.families import FamilyOptions, FlowSpec, NetworkOptions, family, family_names
from galmock.flows.galaxy_training import GalaxyFlowOptions, GalaxyTrainingRecipe
from galmock.flows.property_flow import PropertyFlowOptions
from galmock.flows.training import Runtime, TrainingRecipe, recipe_changes, region_recipe
from galmock.layout import STAGE_ORDER
from galmock.sections import NonNegativeFloat, PositiveFloat, PositiveInt, Section, section_dump

Vector3 = tuple[float, float, float]

PARTICLE_FIELDS = ("x", "y", "z", "vx", "vy", "vz", "mass", "age", "feh", "ofe", "id")


class DemoConfig(Section):
    n_particles: PositiveInt
    components: dict[
        Literal["thin_disk", "thick_disk", "bulge", "stellar_halo", "satellite", "far_field"],
        NonNegativeFloat,
    ]

    @field_validator("components")
    @classmethod
    def _some_mass(cls, value: dict[str, float]) -> dict[str, float]:
        if sum(value.values()) <= 0:
            raise ValueError("component fractions must not all be zero")
        return value


class GadgetConfig(Section):
    particle_type: Annotated[str, Field(pattern=r"^PartType[0-9]$")]
    cosmological: bool | None


class UnitsConfig(Section):
    length: str | None
    velocity: str | None
    mass: str | None
    age: str | None

    @field_validator("length", "velocity", "mass", "age")
    @classmethod
    def _astropy_unit(cls, value: str | None, info: Any) -> str | None:
        if value is None:
            return None
        expected = {"length": u.kpc, "velocity": u.km / u.s, "mass": u.Msun, "age": u.Gyr}
        try:
            unit = u.Unit(value)
        except ValueError as err:
            raise ValueError(f"unknown unit {value!r}") from err
        if not unit.is_equivalent(expected[info.field_name]):
            raise ValueError(f"unit {value!r} is not a {info.field_name} unit")
        return value


class GalaxyConfig(Section):
    source: Literal["demo", "gadget", "table", "pynbody", "model"]
    path: str | None
    model: str | None
    demo: DemoConfig
    gadget: GadgetConfig
    columns: dict[Literal[PARTICLE_FIELDS], str | None]  # type: ignore[valid-type]
    units: UnitsConfig
    centre: Literal["auto"] | Vector3
    centre_velocity: Literal["auto"] | Vector3
    align_disk: bool | None
    align_radius_kpc: PositiveFloat
    rotate_z_deg: float
    select_radius_kpc: PositiveFloat | None

    @field_validator("columns")
    @classmethod
    def _required_columns_mapped(cls, value: dict[str, str | None]) -> dict[str, str | None]:
        unmapped = [f for f in ("x", "y", "z", "vx", "vy", "vz", "mass") if value.get(f) is None]
        if unmapped:
            raise ValueError(f"required field(s) {', '.join(unmapped)} cannot be unmapped (null)")
        return value

    @field_validator("path")
    @classmethod
    def _non_empty(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("path must not be empty")
        return value


class ObserverConfig(Section):
    galcen_distance_kpc: PositiveFloat
    z_sun_kpc: float
    galcen_v_sun_kms: Vector3
    roll_deg: float

    @model_validator(mode="after")
    def _sun_inside_the_galactocentric_distance(self) -> ObserverConfig:
        if abs(self.z_sun_kpc) >= self.galcen_distance_kpc:
            raise ValueError(
                f"|z_sun_kpc| = {abs(self.z_sun_kpc)} must be below galcen_distance_kpc = "
                f"{self.galcen_distance_kpc} (the Sun's height above the plane is part of its "
                "distance to the centre)"
            )
        return self

    @property
    def sun_position_kpc(self) -> tuple[float, float, float]:
        """The Sun in galactocentric Cartesian kpc, as astropy's Galactocentric places it."""
        x = -math.sqrt(self.galcen_distance_kpc**2 - self.z_sun_kpc**2)
        return (x, 0.0, self.z_sun_kpc)


class PlanConfig(Section):
    kind: Literal["kdtree", "sphere"]
    target_particles: Annotated[int, Field(ge=2)]
    margin_kpc: NonNegativeFloat
    margin_fraction: NonNegativeFloat | None
    max_margin_ratio: PositiveFloat | None
    margin_taper: bool
    centre: Literal["sun"] | Vector3
    radius_kpc: PositiveFloat
    holdout_fraction: Annotated[float, Field(ge=0, lt=1)]


class FlowsConfig(NetworkOptions):
    """``flows``: the region models' family (``kind``), network size (the fields of
    :class:`~galmock.flows.families.NetworkOptions`), training recipe (``training``) and
    runtime (the rest: none of it changes the weights).

    Besides these fields there is one section per registered flow family (``flows.cnf``,
    ``flows.maf``, ``flows.nsf``, ...: :mod:`galmock.flows.families`), each checked by its
    family's options model and filled from its defaults; :meth:`options` is ``kind``'s.
    :meth:`recipe` is what a trained model depends on: a model whose recorded recipe differs
    (:meth:`stale_keys`) is retrained.
    """

    # extra: the family sections, validated by _family_sections (unknown keys are still errors).
    model_config = ConfigDict(extra="allow", strict=False, frozen=True)

    kind: str
    training: TrainingRecipe
    checkpoint_every_epochs: PositiveInt
    device: str
    load: str | None
    chunk_rows: Literal["auto"] | PositiveInt
    compile: Literal["auto"] | bool
    threads: Literal["auto"] | PositiveInt

    @field_validator("kind")
    @classmethod
    def _registered_kind(cls, value: str) -> str:
        if value not in family_names():
            raise ValueError(f"unknown flow kind {value!r} (known: {', '.join(family_names())})")
        return value

    @model_validator(mode="wrap")
    @classmethod
    def _family_sections(
        cls, data: Any, handler: ModelWrapValidatorHandler[FlowsConfig]
    ) -> FlowsConfig:
        if not isinstance(data, Mapping):
            return handler(data)
        fields = {k: v for k, v in data.items() if k in cls.model_fields}
        errors: list[InitErrorDetails] = []
        for key, value in data.items():
            if key not in cls.model_fields and key not in family_names():
                errors.append(InitErrorDetails(type="extra_forbidden", loc=(key,), input=value))
        for name in family_names():
            record = family(name)
            value = data.get(name, {})
            try:
                fields[name] = (record.parse_options(value)
                                if isinstance(value, Mapping | FamilyOptions)
                                else record.options.model_validate(value))
            except ValidationError as err:
                errors.extend(_nested_errors(err, (name,)))
        try:
            model = handler(fields)
        except ValidationError as err:
            errors = [*_nested_errors(err, ()), *errors]
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return model

    @classmethod
    def from_defaults(cls, **changes: Any) -> FlowsConfig:
        """``defaults.yaml``'s ``flows`` section with ``changes`` merged in (a dict merges
        into its section), validated: ``FlowsConfig.from_defaults(kind="maf", maf={"transforms":
        2}, training={"max_epochs": 3}, device="cpu")``."""
        return cls.model_validate(_merge(default_config()["flows"], changes))

    def options(self, kind: str | None = None) -> FamilyOptions:
        """The options section of family ``kind`` (default: ``self.kind``)."""
        kind = kind or self.kind
        extra = self.__pydantic_extra__ or {}
        return extra[kind] if kind in extra else family(kind).parse_options()

    def network(self) -> NetworkOptions:
        """The shared network size alone."""
        return NetworkOptions(**section_dump(NetworkOptions, self))

    def spec(self, kind: str | None = None) -> FlowSpec:
        """Family ``kind`` (default: ``self.kind``) with this network size and its options."""
        kind = kind or self.kind
        return FlowSpec(kind, self.network(), self.options(kind))

    def runtime(self) -> Runtime:
        """Where and how fast training runs."""
        return Runtime(device=self.device, chunk_rows=self.chunk_rows, compile=self.compile,
                       checkpoint_every_epochs=self.checkpoint_every_epochs)

    def recipe(self) -> dict[str, Any]:
        """What a region model trained with these settings depends on besides its particles
        and seed: :func:`galmock.flows.training.region_recipe` of ``kind``'s spec and
        ``training`` (kind, network, ``kind``'s options, training recipe; not ``device``,
        ``threads``, sampler speed, checkpoints or ``load``). A trained artifact records it as
        ``training.config``."""
        return region_recipe(self.spec(), self.training)

    def stale_keys(self, recorded: Mapping[str, Any]) -> list[str]:
        """The dotted keys of :meth:`recipe` that differ in ``recorded`` (an artifact's
        ``training.config``); empty when the model is current. Reads the flat ``config`` of
        artifacts written before the family and training sections existed."""
        return recipe_changes(_nested_recipe(recorded), self.recipe())


# Keys that moved when flows grew family and training sections: old path -> new path(s). An old
# job file using one fails with a message naming the new key (and an old artifact's flat
# training.config is read through the same table).
MOVED_KEYS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("flows", "rk4_steps"): ("flows.cnf.rk4_steps",),
    ("flows", "transforms"): ("flows.maf.transforms", "flows.nsf.transforms"),
    ("flows", "spline_bins"): ("flows.nsf.spline_bins",),
    **{("flows", key): (f"flows.training.{key}",) for key in TrainingRecipe.model_fields},
}


def _nested_recipe(recorded: Mapping[str, Any]) -> dict[str, Any]:
    """A recorded recipe in today's nested layout (a flat pre-section one is converted)."""
    if "training" in recorded or not any(("flows", k) in MOVED_KEYS for k in recorded):
        return dict(recorded)
    out: dict[str, Any] = {}
    for key, value in recorded.items():
        targets = MOVED_KEYS.get(("flows", key))
        if targets is None:
            out[key] = value
            continue
        for target in targets:
            section, name = target.split(".")[1:]
            if section in family_names() and section != recorded.get("kind"):
                continue  # another family's option: never part of this model's recipe
            out.setdefault(section, {})[name] = value
    return out


def _nested_errors(err: ValidationError, prefix: tuple[str | int, ...]) -> list[InitErrorDetails]:
    """``err``'s errors re-rooted under ``prefix``, to be raised again from an outer model."""
    out = []
    for e in err.errors():
        detail = InitErrorDetails(type=e["type"], loc=(*prefix, *e["loc"]), input=e["input"])
        if "ctx" in e:
            detail["ctx"] = e["ctx"]
        out.append(detail)
    return out


# upsample.property_flow: the property flow's size, defined with the flow.
PropertyFlowConfig = PropertyFlowOptions


class UpsampleConfig(Section):
    mode: Literal["imf", "fixed"]
    imf: Literal["kroupa2001"]
    mass_min_msun: PositiveFloat
    mass_max_msun: PositiveFloat
    sampling_fraction: Annotated[float, Field(gt=0, le=1)]
    stars_per_particle: PositiveFloat
    warn_stars: PositiveFloat
    checkpoint_seconds: PositiveFloat
    properties: Literal["parent", "flow"]
    property_flow: PropertyFlowConfig
    chunk_rows: PositiveInt
    compressor: Literal["blosc-lz4", "zstd", "none"]
    batch_rows: PositiveInt


class ConvertConfig(Section):
    cluster: Literal["local", "slurm", "mpi"]
    n_workers: PositiveInt
    threads_per_worker: PositiveInt
    memory_per_worker: str
    scheduler_host: str | None
    interface: str | None
    worker_timeout_s: PositiveFloat | None
    hats: bool
    columns: Annotated[list[str], Field(min_length=1)] | None

    @field_validator("memory_per_worker")
    @classmethod
    def _bytes(cls, value: str) -> str:
        try:
            if parse_bytes(value) <= 0:
                raise ValueError
        except ValueError:
            raise ValueError(
                f"{value!r} is not an amount of memory: use e.g. 4GB, 3.5GiB or 512MB"
            ) from None
        return value
    hats_partition_rows: PositiveInt
    # <= 12: point_map.fits is a dense map of 12 * 4**order pixels (1.6 GB in memory at 12).
    hats_highest_order: Annotated[int, Field(ge=0, le=12)]
    parquet_compression: Literal["zstd", "snappy", "none"]
    parquet_compression_level: int | None
    ref_epoch: float
    selections: list[str]


class DustConfig(Section):
    """``observables.dust``: the 3-D dust model the extinction is integrated through."""

    model: Literal["exponential-disk", "none"]
    a0_per_kpc: NonNegativeFloat
    scale_length_kpc: PositiveFloat
    scale_height_kpc: PositiveFloat


class ObservablesConfig(Section):
    """``observables``: Gaia photometry, extinction and errors in the catalogs
    (:mod:`galmock.observables`)."""

    enabled: bool
    isochrones: Literal["mist"]
    release: Literal["dr3", "dr4", "dr5"]
    magnitude_limit: float | None
    dust: DustConfig


class ValidateConfig(Section):
    upsamplers: Annotated[list[str], Field(min_length=1)]
    within_kpc: PositiveFloat | None
    oversample: PositiveFloat
    enbid_bandwidth_factor: PositiveFloat
    classifier_hidden: Annotated[list[PositiveInt], Field(min_length=1)]
    classifier_learning_rate: PositiveFloat
    classifier_batch_size: PositiveInt
    classifier_validation_fraction: Annotated[float, Field(gt=0, lt=1)]
    classifier_patience_epochs: PositiveInt
    classifier_max_epochs: PositiveInt
    classifier_device: str
    truth: Literal["auto"] | bool
    truth_oversample: PositiveFloat | None
    max_test_particles: Annotated[int, Field(ge=10)] | None
    figures: bool
    figure_stars: PositiveInt
    seam_width_kpc: PositiveFloat
    observable_stars: PositiveInt
    seam_stars: PositiveInt


# Slurm's --time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S (or UNLIMITED / INFINITE).
_SLURM_TIME = re.compile(r"(\d+(:\d{1,2}){0,2}|\d+-\d{1,2}(:\d{1,2}){0,2}|UNLIMITED|INFINITE)")
# Slurm's --mem: an integer with an optional K, M, G or T suffix (MiB without one).
_SLURM_MEMORY = re.compile(r"\d+[KMGT]?")
# partition, account, qos: one word (they go into #SBATCH lines unquoted).
SlurmName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.,:+-]+$")]


def _slurm_time(value: Any) -> str | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 10:00 as the number 600.
        raise ValueError(
            f"{value!r} is a number: quote the time limit, e.g. \"02:00:00\" (YAML reads an "
            "unquoted 02:00:00 as a number of seconds)"
        )
    if value is not None and not _SLURM_TIME.fullmatch(str(value)):
        raise ValueError(
            f"not a Slurm time limit {value!r}: use M, M:S, H:M:S, D-H, D-H:M or D-H:M:S "
            "(e.g. 02:30:00 or 1-12:00:00)"
        )
    return value


def _slurm_memory(value: str | None) -> str | None:
    if value is not None and not _SLURM_MEMORY.fullmatch(value):
        raise ValueError(f"not a Slurm memory size {value!r}: use e.g. 4000 (MiB), 64G or 1T")
    return value


def _sbatch_options(value: list[str] | None) -> list[str] | None:
    for item in value or []:
        if "\n" in item or not item.strip().startswith("-"):
            raise ValueError(f"{item!r} is not one sbatch option (e.g. --constraint=a100)")
    return value


class _SlurmResources(Section):
    """The checks shared by the ``slurm`` section and its per-stage overrides."""

    @field_validator("extra_directives", check_fields=False)
    @classmethod
    def _options(cls, value: list[str] | None) -> list[str] | None:
        return _sbatch_options(value)

    @field_validator("time", mode="before", check_fields=False)
    @classmethod
    def _time(cls, value: Any) -> str | None:
        return _slurm_time(value)

    @field_validator("memory", check_fields=False)
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        return _slurm_memory(value)


class SlurmStageConfig(_SlurmResources):
    """Overrides for one stage's job: an absent (null) key takes the ``slurm`` section's value;
    ``extra_directives`` are added to the section's."""

    partition: SlurmName | None = None
    account: SlurmName | None = None
    qos: SlurmName | None = None
    time: str | None = None
    nodes: PositiveInt | None = None
    tasks_per_node: PositiveInt | None = None
    gpus_per_node: Annotated[int, Field(ge=0)] | None = None
    cpus_per_task: PositiveInt | None = None
    memory: str | None = None
    extra_directives: list[str] | None = None



class SlurmConfig(_SlurmResources):
    partition: SlurmName | None
    account: SlurmName | None
    qos: SlurmName | None
    time: str
    nodes: PositiveInt
    tasks_per_node: PositiveInt
    gpus_per_node: Annotated[int, Field(ge=0)]
    gpu_request: Literal["gpus-per-task", "gres"]
    cpus_per_task: PositiveInt
    memory: str | None
    mpi_launcher: Annotated[str, Field(min_length=1)]
    galmock_command: str | None
    setup: list[str]
    extra_directives: list[str]
    requeue: bool
    signal_lead_s: Annotated[int, Field(ge=0)]
    templates: str | None
    stages: dict[Literal[STAGE_ORDER], SlurmStageConfig]  # type: ignore[valid-type]



class SuiteDemoConfig(Section):
    n_galaxies: Annotated[int, Field(ge=2)]
    log_mass_min: float
    log_mass_max: float
    n_particles: Annotated[int, Field(ge=10)]


class SuiteReportConfig(Section):
    mmd_rows: Annotated[int, Field(ge=8)]
    corner_rows: Annotated[int, Field(ge=10)]


class SuiteConfig(GalaxyFlowOptions, GalaxyTrainingRecipe):
    """``suite``: the conditional galaxy model (GalacticFlow) and its training suite. The
    model's architecture and training recipe are the keys of
    :class:`~galmock.flows.galaxy_training.GalaxyFlowOptions` and
    :class:`~galmock.flows.galaxy_training.GalaxyTrainingRecipe`, which this section extends."""

    galaxies: list[dict[str, Any]]
    demo: SuiteDemoConfig
    particles_per_galaxy: PositiveInt | None
    leave_out: Annotated[int, Field(ge=0)] | list[str]
    checkpoint_every_epochs: PositiveInt
    device: str
    threads: Literal["auto"] | PositiveInt
    register_as: str | None
    report: SuiteReportConfig


class GenerateParameters(Section):
    stellar_mass_msun: PositiveFloat | None
    tau50_gyr: float | None
    tau10_gyr: float | None
    mean_feh: float | None


class GenerateConfig(Section):
    """``generate``: one galaxy sampled from a galaxy model (``galmock generate``)."""

    parameters: GenerateParameters
    n_particles: PositiveInt
    batch_rows: PositiveInt
    device: str


class JobConfig(Section):
    """A whole production run."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")]
    seed: Annotated[int, Field(ge=0, lt=2**63)]
    output: Annotated[str, Field(min_length=1)] | None  # "" would silently mean runs/<name>
    galaxy: GalaxyConfig
    observer: ObserverConfig
    plan: PlanConfig
    flows: FlowsConfig
    upsample: UpsampleConfig
    convert: ConvertConfig
    observables: ObservablesConfig
    validation: Annotated[ValidateConfig, Field(alias="validate")]
    slurm: SlurmConfig
    suite: SuiteConfig
    generate: GenerateConfig

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True,
                              allow_inf_nan=False)

    @model_validator(mode="after")
    def _observables_need_imf_stars(self) -> JobConfig:
        if self.observables.enabled and self.upsample.mode != "imf":
            raise ValueError(
                "observables.enabled needs upsample.mode: imf (in fixed mode a \"star\" is a "
                "fraction of a particle's mass, not a star with photometry); set "
                "observables.enabled: false"
            )
        limited = self.observables.enabled and self.observables.magnitude_limit is not None
        if limited and self.upsample.properties != "parent":
            raise ValueError(
                "observables.magnitude_limit needs upsample.properties: parent (the visible "
                "masses are tabulated per parent particle's age and [Fe/H]); set "
                "observables.magnitude_limit: null to draw every star"
            )
        return self

    @property
    def magnitude_limit(self) -> float | None:
        """The G limit upsample keeps stars within (None: every star is kept)."""
        return self.observables.magnitude_limit if self.observables.enabled else None

    @property
    def run_dir(self) -> Path:
        """The run directory (``output``, else ``runs/<name>``), absolute."""
        return Path(self.output or f"runs/{self.name}").expanduser().resolve()

    def to_yaml(self) -> str:
        """The resolved configuration as YAML, loadable again with :func:`load_job`."""
        data = self.model_dump(mode="json", by_alias=True)
        return yaml.safe_dump(data, sort_keys=False)


def default_config() -> dict[str, Any]:
    """The defaults as a plain nested dict (a fresh copy). A registered flow family without a
    section in ``defaults.yaml`` (one added outside galmock) gets its record's defaults."""
    text = resources.files("galmock").joinpath("defaults.yaml").read_text()
    data = yaml.safe_load(text)
    for name in family_names():
        data["flows"].setdefault(name, dict(family(name).defaults))
    return data


# A job file is a few KB of YAML; these bound what reading one may cost.
MAX_JOB_BYTES = 1 << 20
MAX_JOB_NODES = 100_000


def load_job(
    path: str | Path,
    overrides: Iterable[str] = (),
    output: str | Path | None = None,
) -> JobConfig:
    """Load and validate a job file, applying ``key.path=value`` overrides and ``output``."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_JOB_BYTES:
            raise ConfigError(f"{path}: {size:,} bytes is not a job file (at most "
                              f"{MAX_JOB_BYTES:,}; a job file is a few KB of YAML)")
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read job file: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a text (UTF-8) job file: byte {err.start} is "
                          f"{err.object[err.start:err.start + 1]!r}") from None
    try:
        tree = yaml.compose(text)
        nodes = _expanded_nodes(tree)
        if nodes > MAX_JOB_NODES:
            raise ConfigError(f"{path}: its YAML aliases expand to {nodes:,} values (at most "
                              f"{MAX_JOB_NODES:,}): not a job file")
        user = yaml.safe_load(text)
        lines = _line_numbers(tree)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if user is None:
        user = {}
    if not isinstance(user, Mapping):
        kind = type(user).__name__
        raise ConfigError(f"{path}: a job file must be a mapping of keys, got {kind}")
    data = _merge(default_config(), user)
    origins: dict[tuple[str, ...], str] = {}
    for item in overrides:
        key_path, value = _parse_override(path, item)
        _set_path(path, data, key_path, value)
        origins[key_path] = f"--set {item}"
    if output is not None:
        data["output"] = str(output)
        origins[("output",)] = "--output"
    return validate_job(data, path, lines, origins)


def validate_job(
    data: Mapping[str, Any],
    path: str | Path = "<job>",
    lines: Mapping[tuple[str, ...], int] | None = None,
    origins: Mapping[tuple[str, ...], str] | None = None,
) -> JobConfig:
    """Validate a merged job dict; errors name ``path``, key paths, values and lines."""
    try:
        return JobConfig.model_validate(data)
    except ValidationError as err:
        problems = [_describe(e, lines or {}, origins or {}) for e in err.errors()]
        problems = list(dict.fromkeys(problems))  # a short tuple reports each missing item
        listing = "\n  ".join(problems)
        raise ConfigError(f"{path}: invalid job configuration:\n  {listing}") from None


def _describe(
    error: Mapping[str, Any],
    lines: Mapping[tuple[str, ...], int],
    origins: Mapping[tuple[str, ...], str],
) -> str:
    # pydantic appends union-member and literal tags to locations; keep only real keys.
    loc = tuple(str(p) for p in error["loc"] if not _is_pydantic_tag(p))
    key = ".".join(loc) or "<top level>"
    if error["type"] == "extra_forbidden" and loc in MOVED_KEYS:
        message = f"moved to {' and '.join(MOVED_KEYS[loc])}"
    elif error["type"] == "extra_forbidden":
        message = "unknown key"
    elif error["type"] == "missing" and loc and loc[-1].isdigit():
        loc = loc[:-1]
        key = ".".join(loc)
        message = "too few values"
    elif error["type"] == "missing":
        message = "required key is missing"
    else:
        message = error["msg"].removeprefix("Value error, ")
    where = ""
    for n in range(len(loc), 0, -1):
        if loc[:n] in origins:
            where = f" (from {origins[loc[:n]]})"
            break
        if loc[:n] in lines:
            where = f" (line {lines[loc[:n]]})"
            break
    # A check across sections (loc ()) names its keys in the message: the input is the whole job.
    value = "" if error["type"] == "missing" or not loc else f" = {error.get('input')!r}"
    return f"{key}{value}{where}: {message}"


def _is_pydantic_tag(part: Any) -> bool:
    text = str(part)
    return text.startswith(("literal[", "tuple[", "function-", "list[", "dict[")) or text in {
        "str",
        "int",
        "float",
        "bool",
        "none",
    }


def _expanded_nodes(node: yaml.Node | None) -> int:
    """How many values the YAML tree has once its aliases are expanded (counted on the shared
    graph, so a "billion laughs" file is measured without being expanded)."""
    sizes: dict[int, int] = {}

    def size(n: yaml.Node, depth: int) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        if depth > 100:  # a job file nests a few levels; deeper is not one (and recursive)
            return MAX_JOB_NODES + 1
        children: list[yaml.Node] = []
        if isinstance(n, yaml.MappingNode):
            children = [c for pair in n.value for c in pair]
        elif isinstance(n, yaml.SequenceNode):
            children = list(n.value)
        sizes[id(n)] = min(1 + sum(size(c, depth + 1) for c in children), MAX_JOB_NODES + 1)
        return sizes[id(n)]

    return 0 if node is None else size(node, 0)


def _line_numbers(
    node: yaml.Node | None, prefix: tuple[str, ...] = ()
) -> dict[tuple[str, ...], int]:
    out: dict[tuple[str, ...], int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, str(key_node.value))
            out[key] = key_node.start_mark.line + 1
            out.update(_line_numbers(value_node, key))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            key = (*prefix, str(i))
            out[key] = item.start_mark.line + 1
            out.update(_line_numbers(item, key))
    return out


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _parse_override(path: Path, item: str) -> tuple[tuple[str, ...], Any]:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"{path}: --set {item!r}: expected key.path=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: --set {item!r}: value is not valid YAML: {err}") from err
    return tuple(key.split(".")), value


def _set_path(path: Path, data: dict[str, Any], key_path: tuple[str, ...], value: Any) -> None:
    node: Any = data
    for i, part in enumerate(key_path[:-1]):
        child = node.get(part) if isinstance(node, dict) else None
        if not isinstance(child, dict):
            dotted = ".".join(key_path[: i + 1])
            raise ConfigError(f"{path}: --set {'.'.join(key_path)}: {dotted} is not a section")
        node = child
    node[key_path[-1]] = value
