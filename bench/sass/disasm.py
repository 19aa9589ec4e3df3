"""Reading SASS as nvdisasm prints it: functions, their instructions and labels, the hot loop of a
kernel (a backward branch), and the counts the budget uses (instructions, Philox multiplies)."""

import re
from dataclasses import dataclass, field

_FUNCTION = re.compile(r"^\.text\.(\S+):$")
_LABEL = re.compile(r"^(\.L\w+):$")
_INSTRUCTION = re.compile(r"^/\*([0-9a-f]+)\*/\s+(?:(@!?U?P\w+)\s+)?([A-Z][A-Z0-9_.]*)\s*(.*?)\s*;")
_BRANCH_TARGET = re.compile(r"`\((\.L\w+)\)")
# Philox4x32's two round multipliers as ptxas writes 32-bit immediates (signed), and as hex.
PHILOX_MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)
_MULTIPLIER_TEXT = {f"{m:#x}" for m in PHILOX_MULTIPLIERS} | {f"-{(1 << 32) - m:#x}" for m in PHILOX_MULTIPLIERS}
# A 32x32 -> 64 product, or its high half; the low half alone (IMAD, IMUL) is not a second product.
_PRODUCT_OPCODES = ("IMAD.WIDE.U32", "IMAD.HI.U32", "UIMAD.WIDE.U32", "UIMAD.HI.U32")


@dataclass(frozen=True)
class Instruction:
    address: int
    opcode: str
    operands: str
    predicate: str = ""

    @property
    def is_philox_product(self):
        if not self.opcode.startswith(_PRODUCT_OPCODES):
            return False
        return any(operand.strip().lower() in _MULTIPLIER_TEXT for operand in self.operands.split(","))

    @property
    def branch_target(self):
        """The label a BRA jumps to, or None."""
        if self.opcode.split(".")[0] != "BRA":
            return None
        match = _BRANCH_TARGET.search(self.operands)
        return match[1] if match else None


@dataclass
class Function:
    name: str
    instructions: list = field(default_factory=list)
    labels: dict = field(default_factory=dict)  # label -> address of the instruction that follows

    def loops(self):
        """Every loop as (first, last) instruction addresses: a branch back to an earlier label."""
        found = []
        for instruction in self.instructions:
            target = instruction.branch_target
            if target is not None and self.labels.get(target, instruction.address) < instruction.address:
                found.append((self.labels[target], instruction.address))
        return found

    def body(self, loop):
        first, last = loop
        return [i for i in self.instructions if first <= i.address <= last]

    def hot_loop(self):
        """The innermost loop with Philox multiplies (no loop inside it has any); of several,
        the one with the most."""
        generating = [loop for loop in self.loops() if self._products(loop)]
        innermost = [
            loop for loop in generating
            if not any(other != loop and loop[0] <= other[0] and other[1] <= loop[1] for other in generating)
        ]  # fmt: skip
        if not innermost:
            raise ValueError(f"{self.name}: no loop with Philox multiplies")
        return max(innermost, key=self._products)

    def _products(self, loop):
        return sum(i.is_philox_product for i in self.body(loop))


def parse(text):
    """The functions of an `nvdisasm -c` (or `cuobjdump -sass`) listing, by name."""
    functions = {}
    current = None
    pending_labels = []
    for raw in text.splitlines():
        line = raw.strip()
        if match := _FUNCTION.match(line):
            current = functions.setdefault(match[1], Function(match[1]))
            pending_labels = []
        elif current is None:
            continue
        elif match := _LABEL.match(line):
            pending_labels.append(match[1])
        elif match := _INSTRUCTION.match(line):
            address = int(match[1], 16)
            current.instructions.append(Instruction(address, match[3], match[4], match[2] or ""))
            for label in pending_labels:
                current.labels[label] = address
            pending_labels = []
    return functions


@dataclass(frozen=True)
class LoopCount:
    """What one iteration of a hot loop issues per thread."""

    instructions: int
    philox_products: int
    barriers: int
    shared_accesses: int

    @classmethod
    def of(cls, function):
        body = function.body(function.hot_loop())
        return cls(
            instructions=sum(i.opcode != "NOP" for i in body),
            philox_products=sum(i.is_philox_product for i in body),
            barriers=sum(i.opcode.startswith("BAR") for i in body),
            shared_accesses=sum(i.opcode.startswith(("LDS", "STS")) for i in body),
        )

    def philox_calls(self, rounds):
        # Two products per round per call. ptxas may hoist the round that depends on no
        # loop-varying word out of the loop, which reads here as slightly fewer calls.
        return self.philox_products / (2 * rounds)
