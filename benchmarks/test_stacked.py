"""pytest-benchmark: committee members stacked (one set of batched GEMMs) vs one by one.

    .venv/bin/pytest benchmarks/test_stacked.py --benchmark-group-by=param:group
    LSMHA_BENCH_DEVICE=cuda .venv/bin/pytest benchmarks/test_stacked.py   # on a GPU (fp32 eager)

Groups are Table 6's: its two dim-1024 members, its three dim-512 members (CCT-2/3x2, heads
differ), and all five (stack="pad": zero-padded to dim 1024 in one unit), at batch 1, fp32,
eager. Compare the rows of a group as ratios.
"""

import os

import pytest
import torch

from lsmha.engine.stacked import StackedCommittee
from lsmha.models import CCT, committee_specs, parse_committee

DEVICE = torch.device(os.environ.get("LSMHA_BENCH_DEVICE", "cpu"))
GROUPS = {"table6-dim1024x2": [0, 1], "table6-dim512x3": [2, 3, 4], "table6-all5": [0, 1, 2, 3, 4]}


@pytest.fixture(scope="module")
def members():
    torch.manual_seed(0)
    return [CCT(s).eval() for s in committee_specs(parse_committee("table6:5"))]


@pytest.mark.parametrize("stack", ["off", "shape", "pad"])
@pytest.mark.parametrize("group", list(GROUPS))
def test_group_latency(benchmark, members, group, stack):
    program = StackedCommittee([members[i] for i in GROUPS[group]], stack=stack).to(DEVICE)
    x = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8, device=DEVICE)

    @torch.no_grad()
    def run():
        out = program(x)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        return out

    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
