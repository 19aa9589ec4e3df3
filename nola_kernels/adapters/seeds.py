"""Per-module basis seeds derived from one master seed (documented in docs/adapters.md; part of
the checkpoint contract: changing it changes every saved adapter's bases)."""

import hashlib


def derive_seed(master_seed, key, role):
    """The first 8 bytes of SHA-256("nola-seed|<master_seed>|<key>|<role>"), big-endian, shifted
    right by one bit: a seed in [0, 2^63), independent across keys and roles."""
    digest = hashlib.sha256(f"nola-seed|{master_seed}|{key}|{role}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def basis_key(module_name, in_features, out_features, share_basis):
    """What a module's seeds are derived from: its name, or only its shape when bases are shared
    (then every module of one shape draws the same bases, role by role)."""
    return f"shape:{in_features}x{out_features}" if share_basis else f"module:{module_name}"


def module_seeds(master_seed, module_name, in_features, out_features, share_basis):
    """(seed_a, seed_b) of one module."""
    key = basis_key(module_name, in_features, out_features, share_basis)
    return derive_seed(master_seed, key, "A"), derive_seed(master_seed, key, "B")
