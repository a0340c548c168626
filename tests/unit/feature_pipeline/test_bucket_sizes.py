"""How many entity buckets the local engine makes when none is asked for: about 250,000 source rows in the
buckets its workers compute at once (so the job's peak memory does not grow with the workers), a multiple
of the workers (the last round keeps all of them busy), and one for a small source (no worker pool)."""

from __future__ import annotations

import pytest

from feature_pipeline.buckets import ROWS_PER_BUCKET, auto_buckets

ROW = 120  # bytes of a demo CSV row, as auto_buckets assumes


@pytest.mark.parametrize(("rows", "workers", "expected"), [
    (1_000, 1, 1), (1_000, 2, 1), (1_000, 8, 1),
    (1_000_000, 1, 4), (1_000_000, 2, 8), (900_000, 3, 12),
    (10_000_000, 1, 40), (10_000_000, 2, 80), (10_000_000, 4, 160),
    (ROWS_PER_BUCKET + 1, 1, 2), (ROWS_PER_BUCKET // 2 + 1, 2, 2),
])
def test_buckets_from_the_source_size_and_the_workers(rows: int, workers: int, expected: int) -> None:
    got = auto_buckets(rows * ROW, workers=workers)
    assert got == expected
    assert got == 1 or got % workers == 0
    assert rows / got <= ROWS_PER_BUCKET / workers  # the rows computed at once stay about the same
