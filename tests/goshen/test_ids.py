"""Object ids sort by creation time and never repeat."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta, timezone

from goshen.ids import id_pattern, largest_id_at, new_id, smallest_id_at


def test_ids_are_prefixed_time_ordered_and_unique() -> None:
    ids = []
    for _ in range(50):
        ids.append(new_id("job"))
        time.sleep(0.002)
    assert all(re.fullmatch(r"job_[0-9A-HJKMNP-TV-Z]{26}", value) for value in ids)
    assert ids == sorted(ids)
    assert len(set(new_id("job") for _ in range(10_000))) == 10_000


def test_id_pattern_matches_exactly_the_ids_of_its_kind() -> None:
    # fullmatch: Python's `$` would also match before a final newline; validators use fullmatch
    # or pydantic's regex engine, whose `$` is the end of the text.
    made = new_id("ds")
    assert re.fullmatch(id_pattern("ds"), made) and re.fullmatch(id_pattern(), made)
    assert not re.fullmatch(id_pattern("job"), made)
    for malformed in [made.lower(), made[:-1], made + "\n", made.replace("ds_", "ds_\x00", 1)]:
        assert not re.fullmatch(id_pattern("ds"), malformed)


def test_the_ids_of_a_millisecond_lie_between_its_smallest_and_largest() -> None:
    before = datetime.now(UTC)
    made = new_id("job")
    after = datetime.now(UTC)
    assert smallest_id_at("job", before) <= made <= largest_id_at("job", after)
    later = after + timedelta(milliseconds=1)
    assert largest_id_at("job", after) < smallest_id_at("job", later)
    assert made < smallest_id_at("job", later)
    # The same instant in another timezone is the same millisecond.
    elsewhere = before.astimezone(timezone(timedelta(hours=9)))
    assert smallest_id_at("job", elsewhere) == smallest_id_at("job", before)
    for moment in (datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC)):
        assert re.fullmatch(id_pattern("job"), smallest_id_at("job", moment))
        assert re.fullmatch(id_pattern("job"), largest_id_at("job", moment))
