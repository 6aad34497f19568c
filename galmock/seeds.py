r"""Seeds: every random stream in galmock is a pure function of the job seed and a purpose.

A purpose is a tuple of keys (``"train", region, "member", k``); :func:`derive_seed` hashes the
seed and the keys into 63 bits, so streams are independent across purposes and do not depend on
the number of ranks, the order in which regions are handled, or on each other's consumption.
No generator state is global: callers build ``numpy.random.default_rng(seed)`` or
``torch.Generator().manual_seed(seed)`` from the integer.

Example:
    >>> derive_seed(42, "train", 3) == derive_seed(42, "train", 3)
    True
    >>> derive_seed(42, "train", 3) != derive_seed(42, "train", 4)
    True
    >>> 0 <= derive_seed(42, "upsample", 0, 7) < 2**63
    True
"""

from __future__ import annotations

import hashlib


def derive_seed(seed: int, *keys: object) -> int:
    r"""A 63-bit seed for one purpose (``keys``), independent across purposes and members.

    Arguments:
        seed: the job seed.
        keys: what the stream is for, e.g. ``("upsample", region, batch)``.

    Example:
        >>> derive_seed(0)
        2033344993903900207
    """
    text = "/".join(str(k) for k in (seed, *keys))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def region_seed(seed: int, *keys: object) -> int:
    r"""The seed of one draw: ``region_seed(job.seed, "upsample", region, batch)``.

    The same function as :func:`derive_seed`, named for the upsampler's call sites.
    """
    return derive_seed(seed, *keys)
