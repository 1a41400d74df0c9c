"""Object ids sort by creation time and never repeat."""

from __future__ import annotations

import re
import time

from goshen.ids import new_id


def test_ids_are_prefixed_time_ordered_and_unique() -> None:
    ids = []
    for _ in range(50):
        ids.append(new_id("job"))
        time.sleep(0.002)
    assert all(re.fullmatch(r"job_[0-9A-HJKMNP-TV-Z]{26}", value) for value in ids)
    assert ids == sorted(ids)
    assert len(set(new_id("job") for _ in range(10_000))) == 10_000
