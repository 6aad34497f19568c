r"""Config sections: the strict pydantic base of :mod:`galmock.config` and :mod:`galmock.flows`.

A :class:`Section` is one mapping of a job file: unknown keys are errors, values are checked
(and coerced where lossless) on construction, and an instance is frozen. The models carry types
and constraints only; every default lives in ``galmock/defaults.yaml``. This module sits below
both ``config`` (which composes the job from sections) and ``flows`` (whose option and recipe
sections it reuses), so neither has to import the other upward.

Example:
    >>> class Size(Section):
    ...     width: PositiveInt
    >>> Size(width="3").width
    3
    >>> try:
    ...     Size(width=3, height=4)
    ... except ValueError as err:  # pydantic's ValidationError
    ...     print(err.errors()[0]["type"], err.errors()[0]["loc"])
    extra_forbidden ('height',)
    >>> section_dump(Size, Size(width=3))
    {'width': 3}
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]

S = TypeVar("S", bound="Section")


class Section(BaseModel):
    """A config section: unknown keys are errors and values are checked strictly; numbers must
    be finite (``.inf`` or ``.nan`` would pass a bound check and fail hours later)."""

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True, allow_inf_nan=False)


def section_dump(cls: type[Section], value: Section) -> dict[str, Any]:
    r"""The JSON-ready values of ``cls``'s fields in ``value`` (an instance of ``cls`` or of a
    section that extends it), and nothing else.

    Arguments:
        cls: the section whose fields to keep.
        value: an instance of ``cls`` or of a subclass (e.g. the job's ``suite`` section, which
            extends the galaxy model's options).
    """
    if not isinstance(value, cls):
        raise TypeError(f"{type(value).__name__} is not a {cls.__name__}")
    return value.model_dump(mode="json", include=set(cls.model_fields))
