"""Error measures shared by the tests."""


def rel_err(value, reference):
    """Frobenius-norm relative error of `value` against a float64 `reference`."""
    reference = reference.double()
    return ((value.double() - reference).norm() / reference.norm().clamp_min(1e-300)).item()
