"""The installable package: one ``tuneswarm`` command, a wheel that installs and runs outside the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from dashboard.launch import free_port, stop_streamlit, wait_healthy
from tuneswarm import __version__, cli

ROOT = Path(__file__).resolve().parent.parent
TOP_PACKAGES = ("agent", "loadtest", "tuning", "runs", "dashboard", "tuneswarm")


def _requirements(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines()
            if line.strip() and not line.startswith(("#", "-r"))]


def test_the_package_declares_the_runtime_requirements_and_keeps_test_tools_in_an_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["dependencies"] == _requirements(ROOT / "requirements.txt")
    dev = _requirements(ROOT / "requirements-dev.txt")
    assert sorted(project["optional-dependencies"]["dev"]) == sorted(dev)
    runtime = " ".join(project["dependencies"])
    for tool in ("pytest", "ruff", "playwright"):
        assert tool not in runtime
    assert project["scripts"] == {"tuneswarm": "tuneswarm.cli:main"}


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_subcommand_prints_the_version(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([command, "--version"]) == 0
    assert capsys.readouterr().out.strip() == f"tuneswarm {__version__}"


def test_a_version_flag_after_double_dash_is_passed_on_not_answered() -> None:
    argv = cli.app_argv(["--port", "9001", "--", "--version"])
    assert argv[-1] == "--version"
    assert argv[argv.index("--server.port") + 1] == "9001"
    assert argv[argv.index("--server.address") + 1] == "127.0.0.1"
    assert Path(argv[argv.index("run") + 1]) == ROOT / "app.py"


def test_an_unknown_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["bogus"])
    assert exc.value.code == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err


def test_a_subcommand_runs_the_existing_main_with_its_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["swarm", "--help"])
    assert exc.value.code == 0
    assert "--slo" in capsys.readouterr().out


@pytest.mark.integration
@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_venv_and_runs_outside_the_checkout(tmp_path: Path) -> None:
    # Build from a copy so the checkout gets no build/ or egg-info; no build isolation (setuptools is here).
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", ".tuneswarm", "tests", "build",
                                                              "*.egg-info", "__pycache__", ".*cache"))
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), "."],
                   cwd=src, check=True, capture_output=True, timeout=180)
    wheel = next((tmp_path / "dist").glob("tuneswarm-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", "-q", str(wheel)], check=True,
                   capture_output=True, timeout=180)
    # Next to the project's environment: its site-packages comes after the venv's own (a .pth appends).
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True, timeout=60).stdout.strip())
    (purelib / "zz_project_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TUNESWARM_HOME"] = str(tmp_path / "home")
    tuneswarm = str(venv / "bin" / "tuneswarm")

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    out = run(tuneswarm, "--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"tuneswarm {__version__}"
    out = run(tuneswarm, "train", "--help")
    assert out.returncode == 0, out.stderr
    assert "--epochs" in out.stdout
    # Every package (and the dashboard's script and pages) comes from the wheel, not from this checkout.
    where = run(str(python), "-c", "import importlib, sys; from tuneswarm.cli import app_script; "
                "print(*[importlib.import_module(p).__file__ for p in sys.argv[1:]], app_script())", *TOP_PACKAGES)
    assert where.returncode == 0, where.stderr
    for path in where.stdout.split():
        assert Path(path).is_relative_to(purelib), path
    assert (purelib / "dashboard" / "pages" / "train.py").is_file()

    # `tuneswarm app` from the wheel: Streamlit starts on the installed app.py ...
    port = free_port()
    with (tmp_path / "app.log").open("wb") as log:
        app = subprocess.Popen([tuneswarm, "app", "--port", str(port), "--", "--server.headless", "true",
                                "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"],
                               cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(app, port)
    finally:
        stop_streamlit(app)
    # ... which opens on the Train page with the installed pages.
    shown = run(str(python), "-c", "from streamlit.testing.v1 import AppTest; from tuneswarm.cli import app_script; "
                "at = AppTest.from_file(str(app_script()), default_timeout=60).run(); "
                "print(not at.exception, at.title[0].value)")
    assert shown.returncode == 0, shown.stderr[-2000:]
    last = shown.stdout.strip().splitlines()[-1]
    assert last.startswith("True ") and "Train" in last, shown.stdout[-2000:]
