"""Benchmark workers in fresh processes: each prints its result as one JSON line, last."""

from __future__ import annotations

import json
import subprocess


def json_results(procs: list[subprocess.Popen], timeout: float, error_tail: int = 3000) -> list:
    """Each process's last stdout line, parsed as JSON, in order; a worker that fails raises
    with the tail of its stderr."""
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        if proc.returncode:
            raise RuntimeError(err[-error_tail:])
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results
