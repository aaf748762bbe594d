"""CI files: the nightly workflow passes a real schema linter (check-jsonschema with the
vendored GitHub Actions workflow schema) and is consistent with the tool it drives."""
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
WF = REPO / ".github" / "workflows" / "nightly.yml"


def test_workflow_passes_schema_linter():
    exe = Path(sys.executable).parent / "check-jsonschema"
    p = subprocess.run([str(exe), "--builtin-schema", "vendor.github-workflows", str(WF)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr


def test_linter_rejects_a_broken_workflow(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text(WF.read_text().replace("runs-on:", "runs_on:", 1))
    exe = Path(sys.executable).parent / "check-jsonschema"
    p = subprocess.run([str(exe), "--builtin-schema", "vendor.github-workflows", str(bad)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0


def test_workflow_is_consistent_with_the_tool():
    wf = yaml.safe_load(WF.read_text())
    jobs = wf["jobs"]
    shards = int(wf["env"]["SHARDS"])
    assert jobs["shard"]["strategy"]["matrix"]["shard"] == list(range(1, shards + 1))
    assert "self-hosted" in jobs["shard"]["runs-on"] and "kvm" in jobs["shard"]["runs-on"]
    for job in jobs.values():
        for need in ([job["needs"]] if isinstance(job.get("needs"), str) else job.get("needs", [])):
            assert need in jobs
    # every xmitbench subcommand the workflow calls exists
    from harness import cli
    called = set(re.findall(r"xmitbench (\w+)", WF.read_text()))
    ap_src = Path(cli.__file__).read_text()
    for sub in called:
        assert f'add_parser("{sub}"' in ap_src or sub in ("report", "compare"), sub
    on = wf.get("on", wf.get(True))     # PyYAML reads the bare key `on` as True
    assert "schedule" in on and "workflow_dispatch" in on
