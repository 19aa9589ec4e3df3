"""The adapter checkpoint file: a safetensors file whose tensors are the coefficients and whose
header entry "nola_config" is canonical JSON (format, spec version, config, module records and a
SHA-256 digest over all of it and every tensor). Reading checks the file completely, before
anything uses it: see docs/adapters.md for what is refused."""

import dataclasses
import hashlib
import json
import os
import warnings

import torch

from ..spec_version import spec_version_problem
from ..validation import check_int, check_seed
from .config import AdapterConfig

FORMAT = "nola_kernels adapter 2"
UNSIGNED_FORMAT = "nola_kernels adapter 1"  # the format before the digest: still read, with a warning
CONFIG_KEY = "nola_config"
DIGEST_KEY = "digest"
HEADER_FIELDS = ("format", "spec_version", "config", "modules")
RECORD_FIELDS = ("in_features", "out_features", "seed_a", "seed_b")
CONFIG_FIELDS = tuple(field.name for field in dataclasses.fields(AdapterConfig))
# Fields that files written before them lack; they take their defaults.
ADDED_CONFIG_FIELDS = {"exclude_modules", "modules_to_save"}
ROLES = ("alpha", "beta")


class AdapterMismatchError(ValueError):
    """A checkpoint does not fit the model; the message lists every mismatch."""


class AdapterFileError(AdapterMismatchError):
    """A file is not a readable, intact adapter checkpoint (unreadable, malformed, incomplete or
    corrupted); the message names the path and what is wrong, the cause is chained."""


class UnsignedCheckpointWarning(UserWarning):
    """A checkpoint of format 1 loaded: it has no digest, so corruption cannot be detected."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file that passed every check: its config, its module records and its
    coefficients, {"<module>.alpha" / "<module>.beta": float32 tensor}."""

    path: str
    config: AdapterConfig
    modules: dict
    tensors: dict


def canonical_json(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def content_digest(header, tensors):
    """ "sha256:<hex>" over the canonical JSON of `header` (without its digest), then per tensor in
    sorted key order the canonical JSON of [key, dtype, shape] and the tensor's bytes."""
    hasher = hashlib.sha256(canonical_json({k: v for k, v in header.items() if k != DIGEST_KEY}).encode())
    for key in sorted(tensors):
        tensor = tensors[key].detach().cpu().contiguous()
        hasher.update(canonical_json([key, str(tensor.dtype), list(tensor.shape)]).encode())
        # Through a copy: numpy() marks the storage it reads non-resizable, and FSDP2 frees a
        # gathered parameter by resizing its storage.
        hasher.update(tensor.reshape(-1).view(torch.uint8).clone().numpy().tobytes())
    return f"sha256:{hasher.hexdigest()}"


def encode_checkpoint(header, tensors):
    """The file's bytes for `header` (format, spec_version, config, modules) and `tensors`,
    with the digest added."""
    from safetensors.torch import save  # imported when used: the kernels import without it

    signed = {**header, DIGEST_KEY: content_digest(header, tensors)}
    return save(tensors, metadata={CONFIG_KEY: canonical_json(signed)})


def read_adapter(path):
    """(header dict, {key: tensor}) of a file, as stored: nothing checked but that it is a
    safetensors file with a JSON "nola_config" entry."""
    metadata, tensors = _read_safetensors(path)
    if CONFIG_KEY not in metadata:
        raise AdapterFileError(f"{path} is not a nola_kernels adapter (no {CONFIG_KEY!r} in its header)")
    try:
        header = json.loads(metadata[CONFIG_KEY], parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as error:
        raise AdapterFileError(f"{path}: its {CONFIG_KEY!r} entry is not valid JSON: {error}") from error
    return header, tensors


def _read_safetensors(path):
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__} {path!r}")
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as file:
            return file.metadata() or {}, {key: file.get_tensor(key) for key in file.keys()}
    except Exception as error:  # safetensors' own error, OSError, and whatever a strange file raises
        raise AdapterFileError(f"cannot read {path} as a safetensors file: {error}") from error


def _refuse_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def read_checkpoint(path, allow_nonfinite=False):
    """The Checkpoint in `path`, or AdapterFileError naming every problem of the file."""
    header, tensors = read_adapter(path)
    if not isinstance(header, dict):
        raise AdapterFileError(
            f"{path}: its {CONFIG_KEY!r} entry is a {type(header).__name__}, not an object"
        )
    _check_format(path, header, tensors)
    problems = []
    config = _config(header.get("config"), problems)
    modules = _modules(header.get("modules"), problems)
    distribution = None if config is None else config.distribution
    version_problem = spec_version_problem(header.get("spec_version"), distribution)
    if version_problem is not None:
        problems.append(version_problem)
    if config is not None and modules is not None:
        problems += _tensor_problems(config, modules, tensors, allow_nonfinite)
    if problems:
        raise AdapterFileError(f"{path} is not a valid adapter checkpoint:\n  - " + "\n  - ".join(problems))
    return Checkpoint(str(path), config, modules, tensors)


def _check_format(path, header, tensors):
    """The format and the fields it has; for format 2 the digest, verified before any field is
    read, so that a corrupted file is reported as such."""
    form = header.get("format")
    if form not in (FORMAT, UNSIGNED_FORMAT):
        raise AdapterFileError(
            f"{path}: format {form!r}, this library reads {FORMAT!r} and {UNSIGNED_FORMAT!r}"
        )
    expected = set(HEADER_FIELDS) | ({DIGEST_KEY} if form == FORMAT else set())
    missing, unknown = expected - header.keys(), header.keys() - expected
    if missing or unknown:
        raise AdapterFileError(
            f"{path}: header fields missing {sorted(missing)}, unknown {sorted(unknown)} (format {form!r})"
        )
    if form == UNSIGNED_FORMAT:
        warnings.warn(
            f"{path} is a checkpoint of format {UNSIGNED_FORMAT!r}, which has no digest: corruption "
            "cannot be detected. Save it again to add one.",
            UnsignedCheckpointWarning,
            stacklevel=4,
        )
    elif header[DIGEST_KEY] != _digest_of(path, header, tensors):
        raise AdapterFileError(
            f"{path} is corrupted: its contents do not match the digest in its header "
            f"({str(header[DIGEST_KEY])[:80]!r})"
        )


def _digest_of(path, header, tensors):
    try:
        return content_digest(header, tensors)
    except (TypeError, ValueError, RuntimeError) as error:
        raise AdapterFileError(f"{path}: cannot compute the digest of its contents: {error}") from error


def _config(fields, problems):
    if not isinstance(fields, dict) or not set(CONFIG_FIELDS) - ADDED_CONFIG_FIELDS <= set(fields) <= set(CONFIG_FIELDS):
        keys = sorted(fields) if isinstance(fields, dict) else type(fields).__name__
        problems.append(f"config must be an object with the fields {list(CONFIG_FIELDS)}, got {keys}")
        return None
    try:
        return AdapterConfig(**fields)
    except (TypeError, ValueError) as error:
        problems.append(f"config: {error}")
        return None


def _modules(modules, problems):
    if not isinstance(modules, dict) or not modules:
        found = "an empty object" if modules == {} else type(modules).__name__
        problems.append(f"modules must be a non-empty object, got {found}")
        return None
    before = len(problems)
    for name, record in modules.items():
        problems += _record_problems(name, record)
    return modules if len(problems) == before else None


def _record_problems(name, record):
    if not name:
        return ["a module with an empty name"]
    if not isinstance(record, dict) or set(record) != set(RECORD_FIELDS):
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        return [f"module {name}: its entry must have the fields {list(RECORD_FIELDS)}, got {keys}"]
    problems = []
    for field in RECORD_FIELDS:
        try:
            _check_record_field(field, record[field])
        except (TypeError, ValueError) as error:
            problems.append(f"module {name}: {error}")
    return problems


def _check_record_field(field, value):
    return check_seed(field, value) if field.startswith("seed") else check_int(field, value, 1)


def _tensor_problems(config, modules, tensors, allow_nonfinite):
    counts = {"alpha": config.k, "beta": config.l}
    expected = {f"{name}.{role}": counts[role] for name in modules for role in ROLES}
    others = sorted(tensors.keys() - expected.keys())
    if config.modules_to_save is None:
        problems = [f"tensor {key}: not named by any module entry" for key in others]
    else:  # the state of the modules saved whole, checked against the model on load
        problems = [
            _nonfinite(key) for key in others if not allow_nonfinite and not _finite(tensors[key])
        ]
    for key, count in expected.items():
        tensor = tensors.get(key)
        if tensor is None or tuple(tensor.shape) != (count,) or tensor.dtype != torch.float32:
            found = "missing" if tensor is None else f"{tuple(tensor.shape)} {tensor.dtype}"
            problems.append(f"tensor {key} is {found}, expected ({count},) float32")
        elif not allow_nonfinite and not _finite(tensor):
            problems.append(_nonfinite(key))
    return problems


def _finite(tensor):
    return not tensor.is_floating_point() or bool(torch.isfinite(tensor).all())


def _nonfinite(key):
    return f"tensor {key} holds NaN or infinite values (load_adapter(..., allow_nonfinite=True) takes them)"
