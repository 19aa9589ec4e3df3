"""Collects every benchmark case's results and prints the comparison tables at the end."""

import pytest
import report

_CASES = pytest.StashKey[list]()


@pytest.fixture
def record_case(request):
    """Keep one case's results (a dict) for the summary tables."""
    return request.config.stash.setdefault(_CASES, []).append


def pytest_terminal_summary(terminalreporter, config):
    cases = config.stash.get(_CASES, [])
    if not cases:
        return
    tables = report.build_tables(cases)
    terminalreporter.section("nola_matmul against the baselines")
    for line in report.format_tables(tables) + report.format_summary(tables):
        terminalreporter.write_line(line)
    for path in report.write_json(tables):
        terminalreporter.write_line(f"\nwrote {path.relative_to(report.BENCH_DIR.parent)}")
