"""The README's Python blocks run as written, so they cannot rot."""

import re
import shlex
from pathlib import Path

from bnrl import run

README = Path(__file__).resolve().parent.parent / "README.md"


def _block_after(heading: str) -> str:
    text = README.read_text()
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_bring_your_own_keras_model(capsys):
    exec(compile(_block_after("## Bring your own Keras model"), "README", "exec"), {})
    printed = float(capsys.readouterr().out.split()[-1])
    assert printed > 0.0  # the moving mean moved: the updates ran with the optimizer step


def test_python_api_block(tmp_path, monkeypatch, capsys):
    # Same code with fewer steps (1200 instead of 10000, learning_starts 1000 kept) to stay fast:
    # it still reaches the update step 200 times, evaluates and exports.
    block = _block_after("## Python API")
    assert "steps=10000" in block  # the budget replaced below: a silent no-op otherwise
    monkeypatch.chdir(tmp_path)
    exec(compile(block.replace("steps=10000", "steps=1200"), "README", "exec"), {})
    # progress_bar=True prints plain progress lines here (not a terminal); then the prints.
    out = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("[td3")]
    assert out[0].startswith("Run('runs/td3-bn': td3 on Pendulum-v1, seed 0, 1200 steps"), out
    assert out[1].startswith("[1200] ["), out  # one evaluation: the final one (preset: 2000)
    assert "checkpoint='runs/td3-bn/checkpoints/step-000001200 (env step 1200)'" in out[2], out
    assert (tmp_path / "policies" / "td3-bn" / "saved_model.pb").is_file()


def test_python_loop_block(tmp_path, monkeypatch):
    # Same code with fewer steps (1200 instead of 5000, learning_starts 1000 kept) to stay fast:
    # it still reaches the update step 200 times and saves a checkpoint.
    block = _block_after("### The loop by hand")
    assert "range(1, 5001)" in block  # the budget replaced below: a silent no-op otherwise
    code = block.replace("range(1, 5001)", "range(1, 1201)")
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, "README", "exec"), scope)
    assert scope["agent"].updates_done > 0
    assert (tmp_path / "ckpt" / "model.index").exists()


def test_every_command_line_of_the_readme_parses():
    """Each ``python run.py ...`` command of the README's shell blocks is accepted by the parser
    as written: a renamed or removed flag breaks this test, not a reader's first hour. (The
    commands themselves run for minutes to hours; what they run is tested elsewhere.)"""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words[:2] == ["python", "run.py"]:
                    commands.append(words[2:])
    assert len(commands) == sum(block.count("python run.py") for block in blocks) > 10
    for args in commands:
        try:
            run.build_parser().parse_args(args)
        except SystemExit as exc:
            raise AssertionError(f"README command does not parse: {shlex.join(args)}") from exc
