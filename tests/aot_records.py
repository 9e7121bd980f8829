"""Shared checks of the ahead-of-time compile records (fastattn.buildcheck.triton_aot) for the
tests that compile Triton kernels for sm_80/sm_90 with no GPU."""
from __future__ import annotations


def name(record: dict) -> str:
    """``kernel arch config``: how a failure names the record."""
    return f"{record['kernel']} {record['arch']} {record['config']}"


def assert_every_record_compiled(records: list, archs) -> None:
    """No record carries a compile error, and every arch of ``archs`` (80, 90, ...) has records."""
    failed = [f"{name(r)}: {r['error']}" for r in records if r["error"]]
    assert not failed, "\n".join(failed)
    assert {r["arch"] for r in records} == {f"sm_{a}" for a in archs}
