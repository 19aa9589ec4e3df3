"""The version of the basis contract (docs/spec.md) this library implements; checkpoints and
PEFT adapter configs record it, and loading refuses any other."""

SPEC_VERSION = "NOLA-Philox v1"
