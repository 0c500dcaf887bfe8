"""The chaos harness (tests/chaos) for 50 s (about 90 s with the setup and the drain): 3 voters,
2 ingest and 2 delivery processes under load while a seeded schedule kills, pauses, partitions,
wipes and fails disks; zero loss is checked at the end. `make chaos` runs the same harness
longer. A failure names its seed: CHAOS_SEED=<seed> replays the schedule (here or with make
chaos)."""

import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "chaos"))

import harness  # noqa: E402
from conftest import sanitizer_report  # noqa: E402

CHAOS_SHORT_SECONDS = float(os.environ.get("CHAOS_SHORT_SECONDS", "50"))


def test_no_acknowledged_message_is_lost_under_seeded_faults(tmp_path):
    seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(1, 2**31))
    summary = harness.run(tmp_path, CHAOS_SHORT_SECONDS, seed,
                          report_path=tmp_path / "chaos-report.json")
    context = f"seed {seed} (replay: CHAOS_SEED={seed}); summary: {summary}"
    assert summary["faults_injected"] >= 5, context
    # Most transactions must get through: a harness that sends nothing proves nothing.
    assert summary["acked"] >= summary["messages_sent"] // 2, context
    assert summary["lost"] == 0, context
    assert summary["unexpected_arrivals"] == 0, context
    assert summary["queue_left"] == 0, context
    assert summary["fault_effect_failures"] == [], context
    # Under `make test-asan`: no process (killed ones included, up to their kill) reported.
    for stderr_path in sorted(tmp_path.glob("node*/backstop.stderr")):
        report = sanitizer_report(stderr_path)
        assert not report, f"{context}\nsanitizer report in {stderr_path}:\n{report}"
