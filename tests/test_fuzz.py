"""The parsers that take bytes from a peer never raise anything but their own error (bench/fuzz.py, shorter).

hypothesis builds the inputs: arbitrary bytes, and valid samples with bytes replaced, inserted and cut.
`bench/fuzz.py N` runs the same targets on N mutated inputs each (10^6 by default).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.fuzz import Target, check, fuzz, targets

TARGETS = {t.name: t for t in targets()}


def edited(target: Target) -> st.SearchStrategy[bytes]:
    """A seed with a few edits: at a position, drop some bytes and put others (or a known token) there."""
    edit = st.tuples(st.integers(0, 1 << 16), st.integers(0, 32), st.one_of(st.binary(max_size=16), st.sampled_from(target.tokens)))

    def apply(args: tuple[bytes, list[tuple[int, int, bytes]]]) -> bytes:
        data, edits = bytearray(args[0]), args[1]
        for pos, cut, put in edits:
            pos %= len(data) + 1
            data[pos:pos + cut] = put
        return bytes(data)

    return st.tuples(st.sampled_from(target.seeds), st.lists(edit, min_size=1, max_size=6)).map(apply)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_parser_refuses_bad_input_with_its_own_error(name: str) -> None:
    target = TARGETS[name]

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
    @given(st.one_of(st.binary(max_size=512), edited(target)))
    def run(data: bytes) -> None:
        finding = check(target, data)
        assert finding is None, f"{name}: {data!r}\n{finding.error}"

    run()


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_mutation_fuzzer_finds_nothing(name: str) -> None:
    """bench/fuzz.py's own mutations, 2000 per parser (its seeds must parse too)."""
    found = fuzz(TARGETS[name], 2000, seed=7)
    assert not found, "\n".join(f"{f.data!r}\n{f.error}" for f in found)
