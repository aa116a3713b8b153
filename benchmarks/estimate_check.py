"""The dry run's time estimate against a finished study's recorded run times, per treatment:
``python -m benchmarks.estimate_check DIR`` (calibrates on this machine, as ``--dry-run`` does)."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from transferscope import dryrun, load_config
from transferscope.runner import shares_frozen_features
from transferscope.study import Study
from transferscope.treatments import group_jobs


def main(directory: str) -> None:
    study = Study.prepare(load_config(Path(directory) / "config.toml"), decode=False)
    cal = dryrun.calibrate(study)
    recorded = {r["key"]: r["wall_time_s"] for r in
                (json.loads(p.read_text()) for p in (Path(directory) / "runs").glob("*.json"))}
    by_role: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for job in group_jobs(study.plan, shares_frozen_features(study.config)):
        for spec in job.specs:
            if spec.key in recorded:
                by_role[spec.role][0] += dryrun.run_seconds(study, spec, cal, job.shares_features)
                by_role[spec.role][1] += recorded[spec.key]
    for role, (est, rec) in by_role.items():
        print(f"{role:<14} estimated {est:8.1f} s  recorded {rec:8.1f} s  recorded / estimated {rec / est:5.2f}")
    est, rec = (sum(v[i] for v in by_role.values()) for i in (0, 1))
    print(f"{'all':<14} estimated {est:8.1f} s  recorded {rec:8.1f} s  recorded / estimated {rec / est:5.2f}")


if __name__ == "__main__":
    main(sys.argv[1])
