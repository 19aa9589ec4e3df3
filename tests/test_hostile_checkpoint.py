"""Hostile files and arguments for save_adapter and load_adapter: every unreadable, malformed,
incomplete, corrupted or ill-fitting file raises the project's error naming the path, with the
cause chained, and leaves the model exactly as it was (tests/adapter_models.py's snapshot), a
fresh model as much as one that has the adapter. Names introduced with these checks are looked
up inside the tests, so that each test fails on its own where they are missing."""

import json
import math
import os
import re
import signal
import struct
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from adapter_models import coefficients, randomize_coefficients, snapshot
from safetensors.torch import save, save_file
from torch import nn

import nola_kernels
from nola_kernels import AdapterMismatchError, adapted_modules, inject, load_adapter, save_adapter
from nola_kernels.adapters import atomic
from nola_kernels.adapters.layer import NOLAAdapter

TARGETS = ["0", "2", "4"]
SETTINGS = dict(rank=2, num_basis=6, num_basis_b=5, lora_alpha=3.0, seed=11)


def mlp():
    return nn.Sequential(nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4)).eval()


def adapted(**settings):
    model = mlp()
    inject(model, TARGETS, **{**SETTINGS, **settings})
    randomize_coefficients(model)
    return model


def file_error():
    return nola_kernels.adapters.AdapterFileError


def read_adapter(path):
    from nola_kernels.adapters.checkpoint_file import read_adapter

    return read_adapter(path)


def write_signed(path, header, tensors):
    """A changed checkpoint with a valid digest: a crafted file, not a corrupted one."""
    from nola_kernels.adapters.checkpoint_file import encode_checkpoint

    path.write_bytes(encode_checkpoint({k: v for k, v in header.items() if k != "digest"}, tensors))


@pytest.fixture
def saved(tmp_path):
    """(path of a saved adapter, the model it came from)."""
    model = adapted()
    path = tmp_path / "adapter.safetensors"
    save_adapter(model, path)
    return path, model


def targets():
    """The models a refused load must leave alone: fresh, and with the adapter (other coefficients)."""
    return {"fresh": mlp(), "adapted": adapted()}


def refused(path, error, match=None, **options):
    """Load `path` into each target model: `error` naming the path, the model unchanged."""
    for model in targets().values():
        before = snapshot(model)
        with pytest.raises(error, match=match) as raised:
            load_adapter(model, path, **options)
        assert str(path) in str(raised.value)
        assert snapshot(model) == before
    return raised.value


# Class 2: unreadable files.
UNREADABLE = {
    "random 64": lambda data: torch.randint(0, 256, (64,), dtype=torch.uint8).numpy().tobytes(),
    "random 4096": lambda data: torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes(),
    "text": lambda data: b"hello, this is not an adapter\n" * 10,
    "json": lambda data: json.dumps({"format": "nola_kernels adapter 2"}).encode(),
    "huge header length": lambda data: struct.pack("<Q", 2**62) + data[8:],
    "header length past the end": lambda data: struct.pack("<Q", len(data)) + data[8:],
    "zero header length": lambda data: struct.pack("<Q", 0) + data[8:],
    "garbage header": lambda data: data[:8] + b"\xff" * (len(data) - 8),
    "payload cut": lambda data: data[:-5],
    "payload extended": lambda data: data + b"\0" * 12,
}


TRUNCATIONS = {
    **{f"truncated to {n}": lambda data, n=n: data[:n] for n in (0, 1, 7, 8, 9, 50)},
    "truncated to half": lambda data: data[: len(data) // 2],
    "truncated by one": lambda data: data[:-1],
}


@pytest.mark.parametrize("kind", [*UNREADABLE, *TRUNCATIONS])
def test_unreadable_files_are_one_error_naming_the_path(saved, kind):
    path, _ = saved
    path.write_bytes({**UNREADABLE, **TRUNCATIONS}[kind](path.read_bytes()))
    error = refused(path, file_error())
    assert error.__cause__ is not None or "not a nola_kernels adapter" in str(error)


@pytest.mark.parametrize("kind", ["directory", "missing", "missing folder", "fifo-free special: /dev/null"])
def test_paths_that_are_not_files(tmp_path, kind):
    path = {
        "directory": tmp_path,
        "missing": tmp_path / "nothing.safetensors",
        "missing folder": tmp_path / "no" / "adapter.safetensors",
        "fifo-free special: /dev/null": "/dev/null",
    }[kind]
    error = refused(path, file_error())
    assert error.__cause__ is not None


def test_a_pickle_is_not_read(tmp_path):
    path = tmp_path / "adapter.safetensors"
    torch.save({"0.alpha": torch.zeros(6)}, path)
    refused(path, file_error())


@pytest.mark.parametrize(
    "metadata",
    [None, {}, {"format": "pt"}, {"nola_config": ""}, {"nola_config": "{"}, {"nola_config": "nan"},
     {"nola_config": "[1,"}, {"nola_config": "[" * 100000 + "]" * 100000}, {"nola_config": "[]"},
     {"nola_config": '"a string"'}, {"nola_config": "3"}, {"nola_config": "null"},
     {"nola_config": '{"format": NaN}'}, {"nola_config": '{"format": "nola_kernels adapter 2", "x": Infinity}'}],
    ids=lambda m: "none" if m is None else str(m)[:30],
)  # fmt: skip
def test_headers_that_are_not_an_adapter_config(tmp_path, metadata):
    path = tmp_path / "adapter.safetensors"
    save_file({"0.alpha": torch.randn(6)}, path, metadata=metadata)
    refused(path, file_error())


# Class 3: malformed, incomplete or ill-fitting headers; corrupted bytes.
def _drop(mapping, key):
    mapping.pop(key)


def _header_changes():
    record = "modules", "2"
    changes = {
        "modules a list": lambda h, t: h.update(modules=[["0", h["modules"]["0"]]]),
        "modules a string": lambda h, t: h.update(modules="0,2,4"),
        "modules empty": lambda h, t: h.update(modules={}),
        "modules null": lambda h, t: h.update(modules=None),
        "entry empty": lambda h, t: h["modules"].update({"2": {}}),
        "entry a string": lambda h, t: h["modules"].update({"2": "0"}),
        "entry a list": lambda h, t: h["modules"].update({"2": [6, 5, 1, 2]}),
        "entry null": lambda h, t: h["modules"].update({"2": None}),
        "entry extra field": lambda h, t: h["modules"]["2"].update(rank=2),
        "empty module name": lambda h, t: h["modules"].update({"": h["modules"].pop("2")}),
        "config a list": lambda h, t: h.update(config=list(h["config"].items())),
        "config null": lambda h, t: h.update(config=None),
        "config extra field": lambda h, t: h["config"].update(bias=True),
        "header extra field": lambda h, t: h.update(note="hello"),
        "format unknown": lambda h, t: h.update(format="nola_kernels adapter 3"),
        "format null": lambda h, t: h.update(format=None),
        "no format": lambda h, t: _drop(h, "format"),
        "no spec version": lambda h, t: _drop(h, "spec_version"),
        "spec version other": lambda h, t: h.update(spec_version="NOLA-Philox v2"),
        "spec version v1 for a v1.1 distribution": lambda h, t: h["config"].update(
            distribution="uniform16_philox7"
        ),
        "no config": lambda h, t: _drop(h, "config"),
        "no modules": lambda h, t: _drop(h, "modules"),
        "extra tensor": lambda h, t: t.update({"2.gamma": torch.randn(3)}),
        "missing beta": lambda h, t: _drop(t, "2.beta"),
        "alpha float16": lambda h, t: t.update({"2.alpha": t["2.alpha"].half()}),
        "alpha float64": lambda h, t: t.update({"2.alpha": t["2.alpha"].double()}),
        "alpha int32": lambda h, t: t.update({"2.alpha": t["2.alpha"].int()}),
        "alpha too long": lambda h, t: t.update({"2.alpha": torch.randn(7)}),
        "beta too short": lambda h, t: t.update({"2.beta": torch.randn(4)}),
        "alpha 2-D": lambda h, t: t.update({"2.alpha": t["2.alpha"].reshape(2, 3)}),
        "alpha empty": lambda h, t: t.update({"2.alpha": torch.randn(0)}),
    }
    for field in ("in_features", "out_features", "seed_a", "seed_b"):
        changes[f"entry without {field}"] = lambda h, t, f=field: _drop(h[record[0]][record[1]], f)
    for field in ("rank", "num_basis", "num_basis_b", "lora_alpha", "dropout", "distribution", "seed",
                  "share_basis", "target_modules"):  # fmt: skip
        changes[f"config without {field}"] = lambda h, t, f=field: _drop(h["config"], f)
    bad_values = {
        "in_features": ["6", 0, -6, 6.0, True, None],
        "seed_a": [-1, 2**63, 1.5, True, "1"],
        "seed_b": [None, 2**64],
    }
    for field, values in bad_values.items():
        for value in values:
            changes[f"{field}={value!r}"] = lambda h, t, f=field, v=value: h["modules"]["2"].update({f: v})
    bad_config = {
        "rank": [0, "2", 2.5, None],
        "num_basis": [0, 2**32 + 1, "6"],
        "lora_alpha": ["3", True],
        "dropout": [1.0, -1],
        "distribution": ["normal", 5],
        "seed": [-1, "11", 2**63],
        "share_basis": ["no", 0],
        "target_modules": [[], 5, "(", [3]],
    }
    for field, values in bad_config.items():
        for value in values:
            changes[f"config {field}={value!r}"] = lambda h, t, f=field, v=value: h["config"].update({f: v})
    return changes


HEADER_CHANGES = _header_changes()


@pytest.mark.parametrize("change", list(HEADER_CHANGES))
def test_malformed_or_incomplete_files_are_refused(saved, change):
    path, _ = saved
    header, tensors = read_adapter(path)
    HEADER_CHANGES[change](header, tensors)
    write_signed(path, header, tensors)
    refused(path, file_error())


@pytest.mark.parametrize(
    "version, distribution, message",
    [
        ("NOLA-Philox v2", "uniform",
         "spec_version 'NOLA-Philox v2': this library reads 'NOLA-Philox v1' and 'NOLA-Philox v1.1'"),
        (None, "uniform", "spec_version None: this library reads"),
        ("NOLA-Philox v1", "rademacher_philox7",
         "spec_version 'NOLA-Philox v1' does not define distribution 'rademacher_philox7' (added in 'NOLA-Philox v1.1')"),
    ],
)  # fmt: skip
def test_a_spec_version_refusal_names_the_field(saved, version, distribution, message):
    path, _ = saved
    header, tensors = read_adapter(path)
    header["spec_version"], header["config"]["distribution"] = version, distribution
    write_signed(path, header, tensors)
    refused(path, file_error(), match=re.escape(message))


def test_a_v1_distribution_loads_from_a_file_of_either_version(saved):
    # v1.1 keeps every v1 value: "NOLA-Philox v1.1" may record v1's distributions too.
    path, model = saved
    header, tensors = read_adapter(path)
    assert header["spec_version"] == "NOLA-Philox v1"
    header["spec_version"] = "NOLA-Philox v1.1"
    write_signed(path, header, tensors)
    fresh = mlp()
    load_adapter(fresh, path)
    expected, loaded = coefficients(model), coefficients(fresh)
    assert expected.keys() == loaded.keys() and all(torch.equal(expected[k], loaded[k]) for k in expected)


SETTING_CHANGES = {
    "rank": 3, "num_basis": 7, "num_basis_b": 6, "lora_alpha": 4.0, "dropout": 0.25,
    "distribution": "rademacher", "seed": 12, "share_basis": True,
}  # fmt: skip


@pytest.mark.parametrize("setting", list(SETTING_CHANGES))
def test_a_setting_that_disagrees_with_the_model_is_refused(tmp_path, setting):
    path = tmp_path / "adapter.safetensors"
    save_adapter(adapted(**{setting: SETTING_CHANGES[setting]}), path)
    model = adapted()
    before = snapshot(model)
    with pytest.raises(AdapterMismatchError, match=setting):
        load_adapter(model, path)
    assert snapshot(model) == before


@pytest.mark.parametrize("field", ["in_features", "out_features", "seed_a", "seed_b"])
@pytest.mark.parametrize("model", ["fresh", "adapted"])
def test_a_module_entry_that_disagrees_with_the_model_is_refused(saved, field, model):
    path, _ = saved
    header, tensors = read_adapter(path)
    header["modules"]["4"][field] += 1
    write_signed(path, header, tensors)
    target = targets()[model]
    before = snapshot(target)
    with pytest.raises(AdapterMismatchError, match=f"module 4: {field}"):
        load_adapter(target, path)
    assert snapshot(target) == before


def test_empty_entries_do_not_load_onto_other_bases(saved):
    # The file's entries carry no seeds; the model has the adapter from another master seed.
    path, _ = saved
    header, tensors = read_adapter(path)
    header["modules"] = {name: {} for name in header["modules"]}
    write_signed(path, header, tensors)
    model = adapted(seed=12)
    before = snapshot(model)
    with pytest.raises(AdapterMismatchError):
        load_adapter(model, path)
    assert snapshot(model) == before


def test_a_merged_adapter_is_not_overwritten(saved):
    path, _ = saved
    model = adapted()
    adapted_modules(model)["2"].merge()
    before = snapshot(model)
    with pytest.raises(AdapterMismatchError, match="merged"):
        load_adapter(model, path)
    assert snapshot(model) == before


@pytest.mark.parametrize("region", ["coefficients", "nola_config", "digest", "safetensors header"])
def test_a_flipped_bit_is_an_error(saved, region):
    path, _ = saved
    data = bytearray(path.read_bytes())
    (header_length,) = struct.unpack("<Q", data[:8])
    header_text = data[8 : 8 + header_length].decode()
    start = {
        "coefficients": 8 + header_length + 5,
        "nola_config": 8 + header_text.index('\\"num_basis\\":') + len('\\"num_basis\\":'),
        "digest": 8 + header_text.index("sha256:") + 12,
        "safetensors header": 8 + header_text.index('"0.alpha"') + 1,
    }[region]
    data[start] ^= 0x01
    path.write_bytes(bytes(data))
    refused(path, file_error())


def test_single_bit_flips_are_errors_or_change_nothing(saved):
    """2000 random single-bit corruptions of a file (of about 13,000 possible): each is refused,
    or reads back the very same header and coefficients (a flip in the padding, say)."""
    path, _ = saved
    data = path.read_bytes()
    header, tensors = read_adapter(path)
    from nola_kernels.adapters.checkpoint_file import read_checkpoint

    accepted = 0
    flips = torch.randint(0, 8 * len(data), (2000,)).tolist()
    for position, bit in (divmod(flip, 8) for flip in flips):
        corrupted = bytearray(data)
        corrupted[position] ^= 1 << bit
        path.write_bytes(bytes(corrupted))
        try:
            read_checkpoint(path)
        except file_error():
            continue
        accepted += 1
        flipped_header, flipped_tensors = read_adapter(path)
        assert flipped_header == header, (position, bit)
        assert flipped_tensors.keys() == tensors.keys()
        assert all(
            torch.equal(flipped_tensors[k].view(torch.int32), t.view(torch.int32)) for k, t in tensors.items()
        )
    assert accepted < len(flips) // 10  # only padding can flip unnoticed


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("key", ["0.alpha", "4.beta"])
def test_non_finite_coefficients_are_refused_unless_allowed(saved, key, value):
    path, _ = saved
    header, tensors = read_adapter(path)
    position = int(torch.randint(0, tensors[key].numel(), ()))
    tensors[key][position] = value
    write_signed(path, header, tensors)
    refused(path, file_error(), match="NaN or infinite")
    for model in targets().values():
        load_adapter(model, path, allow_nonfinite=True)
        loaded = coefficients(model)
        assert all(torch.equal(loaded[k].view(torch.int32), t.view(torch.int32)) for k, t in tensors.items())


# Class 4: sizes are checked against the file's tensors before anything is allocated.
@pytest.mark.parametrize(
    "change",
    [("config", "num_basis", 2**31), ("config", "num_basis", 2**32), ("config", "num_basis_b", 2**31),
     ("config", "rank", 2**40), ("modules", "in_features", 2**40)],
    ids=str,
)  # fmt: skip
def test_huge_sizes_in_a_header_allocate_nothing(saved, monkeypatch, change):
    path, _ = saved
    header, tensors = read_adapter(path)
    where, field, value = change
    (header["config"] if where == "config" else header["modules"]["2"]).update({field: value})
    write_signed(path, header, tensors)

    def no_allocation(*args, **kwargs):
        raise AssertionError("an adapter was allocated before the header was checked")

    models = targets()
    monkeypatch.setattr(NOLAAdapter, "__init__", no_allocation)
    for model in models.values():
        before = snapshot(model)
        with pytest.raises(AdapterMismatchError):
            load_adapter(model, path)
        assert snapshot(model) == before


# Format 1: files saved before the digest still load, with a warning; entries must be complete.
def _unsigned(path, header, tensors):
    header = {k: v for k, v in header.items() if k != "digest"}
    header["format"] = "nola_kernels adapter 1"
    path.write_bytes(save(tensors, metadata={"nola_config": json.dumps(header)}))


def test_format_1_loads_with_a_warning(saved):
    path, model = saved
    _unsigned(path, *read_adapter(path))
    for target in targets().values():
        with pytest.warns(nola_kernels.adapters.UnsignedCheckpointWarning, match="no digest"):
            load_adapter(target, path)
        saved_coefficients, loaded = coefficients(model), coefficients(target)
        assert all(torch.equal(saved_coefficients[k], loaded[k]) for k in saved_coefficients)


@pytest.mark.parametrize("change", ["entry empty", "entry without seed_a", "config without seed", "extra tensor",
                                    "alpha too long", "modules a list"])  # fmt: skip
def test_format_1_entries_must_still_be_complete(saved, change):
    path, _ = saved
    header, tensors = read_adapter(path)
    HEADER_CHANGES[change](header, tensors)
    _unsigned(path, header, tensors)
    with pytest.warns(nola_kernels.adapters.UnsignedCheckpointWarning):
        refused(path, file_error())


# The load's own arguments.
@pytest.mark.parametrize(
    "arguments, argument",
    [(dict(path=5), "path"), (dict(path=None), "path"), (dict(path=b"adapter"), "path"),
     (dict(adapter_name=5), "adapter_name"), (dict(adapter_name=""), "adapter_name"),
     (dict(adapter_name="a.b"), "adapter_name"), (dict(allow_nonfinite="yes"), "allow_nonfinite"),
     (dict(allow_nonfinite=1), "allow_nonfinite"), (dict(model="model"), "model")],
)  # fmt: skip
def test_load_refuses_bad_arguments_by_name(saved, arguments, argument):
    path, _ = saved
    for model in targets().values():
        before = snapshot(model)
        with pytest.raises((TypeError, ValueError), match=argument):
            load_adapter(**{"model": model, "path": path, **arguments})
        assert snapshot(model) == before


@pytest.mark.parametrize(
    "arguments, error",
    [(dict(path=5), TypeError), (dict(path="no/such/folder/a"),
     FileNotFoundError), (dict(adapter_name=5), TypeError), (dict(adapter_name="nope"), KeyError),
     (dict(model=[1]), TypeError)],
)  # fmt: skip
def test_save_refuses_bad_arguments_before_writing(tmp_path, arguments, error):
    (tmp_path / "folder").mkdir()
    model = adapted()
    arguments = {"model": model, "path": tmp_path / "adapter.safetensors", **arguments}
    if isinstance(arguments["path"], str):
        arguments["path"] = tmp_path / arguments["path"]
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(error):
        save_adapter(**arguments)
    assert sorted(os.listdir(tmp_path)) == before


# Class 10: saved files follow the umask; a killed save's temporary file is removed by the next.
@pytest.fixture(params=[0o022, 0o077, 0o002, 0o027], ids=oct)
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def test_saved_files_follow_the_umask(tmp_path, umask):
    model = adapted()
    save_adapter(model, tmp_path / "adapter.safetensors")
    nola_kernels.export_peft_lora(model, tmp_path / "lora")
    for path in (tmp_path / "adapter.safetensors", tmp_path / "lora" / "adapter_model.safetensors",
                 tmp_path / "lora" / "adapter_config.json"):  # fmt: skip
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_temporary_files_of_the_target_are_removed(tmp_path):
    target = tmp_path / "adapter.safetensors"
    live, host = os.getppid(), atomic._host()
    old = time.time() - atomic.STALE_AFTER_SECONDS - 60
    files = {  # name: (modification time or None for now, kept)
        f".adapter.safetensors.{host}.{_dead_pid()}.{'ab' * 8}.tmp": (None, False),  # a killed save
        f".adapter.safetensors.{host}.{live}.{'cd' * 8}.tmp": (None, True),  # a save in another process
        f".adapter.safetensors.{host}.{os.getpid()}.{'ef' * 8}.tmp": (None, True),  # this process's thread
        f".other.safetensors.{host}.{_dead_pid()}.{'ab' * 8}.tmp": (None, True),  # another target's
        # Another host's save (a shared folder): its process ID says nothing here; only age does.
        f".adapter.safetensors.elsewhere-7.{_dead_pid()}.{'12' * 8}.tmp": (None, True),
        f".adapter.safetensors.elsewhere-7.{live}.{'34' * 8}.tmp": (old, False),
        # The names of earlier releases, which no current save writes: judged by age as well.
        f".adapter.safetensors.{_dead_pid()}.{'56' * 8}.tmp": (None, True),
        f".adapter.safetensors.{live}.{'78' * 8}.tmp": (old, False),
        ".adapter.safetensors.x1Yz_9Qa.tmp": (old, False),
        "notes.tmp": (old, True),
    }
    for name, (mtime, _) in files.items():
        (tmp_path / name).write_bytes(b"partial")
        if mtime is not None:
            os.utime(tmp_path / name, (mtime, mtime))
    save_adapter(adapted(), target)
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["adapter.safetensors", *(n for n, (_, kept) in files.items() if kept)]
    )


def test_a_save_killed_mid_write_is_cleaned_by_the_next(tmp_path):
    target = tmp_path / "adapter.safetensors"
    ready = tmp_path / "ready"
    script = textwrap.dedent(f"""
        import os, sys, time, torch
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_hostile_checkpoint import adapted
        from nola_kernels import save_adapter
        from nola_kernels.adapters import atomic

        def stall(descriptor):
            open({str(ready)!r}, "w").close()
            time.sleep(600)

        atomic.os.fsync = stall
        save_adapter(adapted(), {str(target)!r})
    """)
    process = subprocess.Popen([sys.executable, "-c", script])
    try:
        for _ in range(1200):
            if ready.exists() or process.poll() is not None:
                break
            time.sleep(0.1)
        assert ready.exists(), "the save never reached fsync"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    left = [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
    assert len(left) == 1 and not target.exists()
    save_adapter(adapted(), target)
    assert sorted(os.listdir(tmp_path)) == ["adapter.safetensors", "ready"]
