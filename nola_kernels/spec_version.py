"""The versions of the basis contract (docs/spec.md, "Versioning"). SPEC_VERSION is the one this
library implements. A checkpoint or PEFT adapter config records the version its distribution
needs (v1's distributions: "NOLA-Philox v1", readable by every release), and loading accepts
every version in SPEC_VERSIONS, but no distribution in a file whose version does not define it."""

from .basis import V1_DISTRIBUTIONS

V1_SPEC_VERSION = "NOLA-Philox v1"
SPEC_VERSION = "NOLA-Philox v1.1"
SPEC_VERSIONS = (V1_SPEC_VERSION, SPEC_VERSION)


def spec_version_for(distribution):
    """The first version that defines `distribution`: the one its files record."""
    return V1_SPEC_VERSION if distribution in V1_DISTRIBUTIONS else SPEC_VERSION


def spec_version_problem(version, distribution=None):
    """Why a file that records `version` cannot be read here, for bases of `distribution` (None:
    not known), or None when it can."""
    if version not in SPEC_VERSIONS:
        return f"spec_version {version!r}: this library reads {' and '.join(map(repr, SPEC_VERSIONS))}"
    needed = None if distribution is None else spec_version_for(distribution)
    if needed is not None and SPEC_VERSIONS.index(version) < SPEC_VERSIONS.index(needed):
        return f"spec_version {version!r} does not define distribution {distribution!r} (added in {needed!r})"
    return None
