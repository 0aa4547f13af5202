"""Two model repositories end to end on this host, interleaved: which serves photos faster.

    git worktree add /tmp/before <commit>
    python -m sampleiqa.perf.repository_ab --before /tmp/before --photos 300 --rounds 3 \\
        --report perf/results/uint8-pixels-cpu.md

`--before` is a checkout of an earlier commit: its `model_repository/` is served from that
checkout's folder and with it first among the stubs' site dirs (the stubs embed libpython,
ignore PYTHONPATH and look in their working folder first), so they import the checkout's
`sampleiqa`, not this one's; each run checks every photo scored `ok`. The other side is
this checkout's repository, served from here. Each round starts one
server at a time (two would share the cores), scores the same photos with `sampleiqa score
--url` (README command 1's path: the real CLI, gRPC and Triton) and stops it; the
rounds alternate which goes first. Medians, their ratio, and each side's server CPU ms per
photo (from /proc, the whole process tree).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from contextlib import chdir
from pathlib import Path

from sampleiqa.paths import DEFAULT_REPOSITORY
from sampleiqa.runtime import environment
from sampleiqa.server import TritonServer, stub_environment

from .cpu_time import process_tree_cpu_s
from .inputs import copy_photos

RATE = re.compile(r"\(([\d.]+) images/s\)")


def one_run(repository: Path, env: dict, folder: Path, photos: Path, tmp: Path) -> tuple[float, float]:
    """(images/s of the scoring, server CPU ms per photo) for one fresh server started in `folder`."""
    with chdir(folder):
        server = TritonServer(repository.resolve(), log_file=tmp / "triton.log", env=env)
        server.start()
    with server:
        out = tmp / "scores.csv"
        out.unlink(missing_ok=True)
        cpu0 = process_tree_cpu_s(server.process.pid)
        res = subprocess.run(
            [sys.executable, "-m", "sampleiqa.cli", "score", str(photos), "--url", server.url, "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        cpu = process_tree_cpu_s(server.process.pid) - cpu0
    n = len(list(photos.iterdir()))
    if res.returncode != 0 or not (m := RATE.search(res.stderr)) or f"{n} scored ok" not in res.stderr:
        raise SystemExit(f"scoring failed (every photo must score ok):\n{res.stderr[-2000:]}")
    return float(m.group(1)), cpu * 1000 / n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before", type=Path, required=True, help="a checkout of the earlier commit")
    p.add_argument("--photos", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--report", type=Path, default=None)
    args = p.parse_args(argv)
    site_dirs = os.pathsep.join([str(args.before.resolve()), stub_environment()[environment.SITE_DIRS]])
    sides = {
        "before": (args.before / "model_repository", {environment.SITE_DIRS: site_dirs}, args.before.resolve()),
        "after": (DEFAULT_REPOSITORY, {}, Path.cwd()),
    }
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in sides}
    with tempfile.TemporaryDirectory() as tmp:
        photos = copy_photos(Path(tmp) / "photos", args.photos)
        for r in range(args.rounds):
            for name in list(sides) if r % 2 == 0 else list(reversed(sides)):
                runs[name].append(one_run(*sides[name], photos, Path(tmp)))
                print(
                    f"round {r + 1}: {name}: {runs[name][-1][0]:.1f} images/s, "
                    f"{runs[name][-1][1]:.0f} server CPU ms/photo",
                    flush=True,
                )
    med = {k: (statistics.median(v[0] for v in rs), statistics.median(v[1] for v in rs)) for k, rs in runs.items()}
    lines = [
        f"# Two repositories end to end, interleaved ({args.photos} BIQ2021 photos, {args.rounds} rounds)",
        "",
        f"`python -m sampleiqa.perf.repository_ab --before {args.before} --photos {args.photos} "
        f"--rounds {args.rounds}`: `sampleiqa score --url` against one server at a time.",
        "",
        "| repository | median images/s | each round | median server CPU ms/photo |",
        "|---|---|---|---|",
    ]
    for k, (rate, cpu) in med.items():
        lines.append(
            f"| {k} (`{sides[k][0]}`) | {rate:.1f} | {', '.join(f'{v[0]:.1f}' for v in runs[k])} | {cpu:.0f} |"
        )
    lines += ["", f"**after / before: {med['after'][0] / med['before'][0]:.2f}** (images/s, same run)"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.report:
        args.report.write_text(text)
        args.report.with_suffix(".json").write_text(json.dumps({"runs": runs, "photos": args.photos}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
