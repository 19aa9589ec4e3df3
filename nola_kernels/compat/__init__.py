"""Replacements for other NOLA code's layers, with its names and checkpoints (official: the
official code, github UCDvision/NOLA)."""
