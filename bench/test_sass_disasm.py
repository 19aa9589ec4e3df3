"""The SASS reader of the budget (bench/sass/disasm.py) on a hand-written listing: functions,
labels, loops, the hot loop and the counts per iteration."""

import pytest
from sass.disasm import LoopCount, parse

# Two functions; the kernel has an outer loop (L_x_0) holding an inner one (L_x_1) with two
# Philox round products (IMAD.WIDE.U32 and IMAD.HI.U32 by the multipliers, written as ptxas
# prints 32-bit immediates) and one product by another constant (an address), a barrier and a
# shared store; a self-branch after EXIT is not a loop.
LISTING = """
	.target	sm_90a
//--------------------- .text.kernel         --------------------------
	.section	.text.kernel,"ax",@progbits
kernel:
.text.kernel:
        /*0000*/                   LDC R1, c[0x0][0x28] ;
.L_x_0:
        /*0010*/                   IMAD.WIDE.U32 R4, R2, 0x4, R6 ;
.L_x_1:
        /*0020*/                   IMAD.WIDE.U32 R8, R9, -0x2daee0ad, RZ ;
        /*0030*/                   UIMAD.HI.U32 UR4, UR5, -0x326172a9, URZ ;
        /*0040*/                   IMAD R10, R9, -0x2daee0ad, RZ ;
        /*0050*/                   FFMA R11, R12, R13, R11 ;
        /*0060*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0070*/                   STS [R14], R11 ;
        /*0080*/               @P0 BRA `(.L_x_1) ;
        /*0090*/                   NOP ;
        /*00a0*/              @!P1 BRA `(.L_x_0) ;
        /*00b0*/                   EXIT ;
.L_x_2:
        /*00c0*/                   BRA `(.L_x_2);
//--------------------- .text.other         --------------------------
.text.other:
        /*0000*/                   EXIT ;
"""


def test_functions_instructions_and_labels():
    functions = parse(LISTING)
    assert sorted(functions) == ["kernel", "other"]
    kernel = functions["kernel"]
    assert len(kernel.instructions) == 13
    assert kernel.labels == {".L_x_0": 0x10, ".L_x_1": 0x20, ".L_x_2": 0xC0}
    assert kernel.instructions[8].predicate == "@P0" and kernel.instructions[8].branch_target == ".L_x_1"


def test_loops_are_backward_branches_and_the_hot_one_is_innermost():
    kernel = parse(LISTING)["kernel"]
    assert sorted(kernel.loops()) == [(0x10, 0xA0), (0x20, 0x80)]
    assert kernel.hot_loop() == (0x20, 0x80)


def test_counts_per_iteration():
    count = LoopCount.of(parse(LISTING)["kernel"])
    assert count == LoopCount(instructions=7, philox_products=2, barriers=1, shared_accesses=1)
    assert count.philox_calls(rounds=1) == 1


def test_a_kernel_without_philox_has_no_hot_loop():
    with pytest.raises(ValueError, match="no loop with Philox"):
        parse(LISTING)["other"].hot_loop()
