"""The README's first command, past its install steps, on the installed package: a real batch job end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
SETUP_STEPS = ("python3 -m venv", ". .venv/bin/activate", "pip install")
CAPITALS = {"capital-france": "Paris", "capital-japan": "Tokyo", "capital-italy": "Rome",
            "capital-germany": "Berlin", "capital-uk": "London"}


def main_job_steps() -> list[str]:
    """The line after the README's '# set up and run the main job' comment, without the steps that install."""
    lines = (ROOT / "README.md").read_text().splitlines()
    line = lines[next(i for i, text in enumerate(lines) if text.startswith("# set up and run the main job")) + 1]
    steps = [s.strip() for s in line.split(" && ")]
    assert [s for s in steps if s.startswith(SETUP_STEPS)], "the first command no longer sets up"
    return [s for s in steps if not s.startswith(SETUP_STEPS)]


def test_readme_main_job_answers_questions_estimates_and_reports(smollm2_gguf, tmp_path) -> None:
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT / "src")}  # this checkout, whichever one the venv's editable install points at
    steps = main_job_steps()
    done = subprocess.run(" && ".join(steps), shell=True, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "The capital of France is Paris." in out  # the command's own output names the answer
    for row in ("estimate: SmolLM2-135M-Instruct", "batch job: SmolLM2-135M-Instruct", "Output token throughput",
                "Prompt tokens saved by prefix reuse", "Estimated wall time, job", "Actual wall time, job"):
        assert row in out, row
    results = {r["custom_id"]: r["response"]["body"]["choices"][0]["message"]["content"]
               for r in map(json.loads, (tmp_path / "answers.jsonl").read_text().splitlines())}
    assert len(results) == 15
    for custom_id, capital in CAPITALS.items():
        assert capital in results[custom_id], (custom_id, results[custom_id])
    saved = [int(line.split()[-1]) for line in out.splitlines() if "saved by prefix reuse" in line]
    assert len(saved) == 2 and saved[-1] > 0  # estimate, then run: the shared system prompt computed once per group
    assert "Headline" in (tmp_path / "report.html").read_text()
