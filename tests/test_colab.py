"""course_lib.colab, the Colab set-up of the notebooks' first cell: its four situations, without Colab and without a
network."""

from __future__ import annotations

import ast
import sys
import types
from pathlib import Path

import nbformat
import pytest

from course_lib import colab
from course_lib.colab import ColabActions, ColabSetupError, setup_colab

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PINNED = {"course_lib": "0.1.0", **colab.PINNED_RUNTIME}


class FakeColab:
    """Records what setup_colab asks of the machine; ``installed`` says whether the course is there."""

    def __init__(self, installed: bool, loaded_numpy: str | None = None, install_works: bool = True):
        self.installed = installed
        self.loaded_numpy = loaded_numpy
        self.install_works = install_works
        self.calls: list[str] = []
        self.said: list[str] = []
        self.cwd: Path | None = None

    def actions(self) -> ColabActions:
        return ColabActions(
            install=self.install,
            restart=lambda: self.calls.append("restart"),
            enable_widgets=lambda: self.calls.append("widgets"),
            say=self.said.append,
            chdir=self.chdir,
            versions=self.versions,
            loaded=lambda module: self.loaded_numpy if module == "numpy" else None,
            notebooks_dir=Path("/content/fhe-gpt2-course/notebooks"),
        )

    def install(self) -> None:
        self.calls.append("install")
        self.installed = self.install_works

    def chdir(self, path: Path) -> None:
        self.calls.append("chdir")
        self.cwd = path

    def versions(self, names):
        return {name: (PINNED[name] if self.installed else None) for name in names}


# --- the four situations the issue names ---------------------------------------------------------------------------


def test_not_on_colab_the_first_cell_does_nothing():
    assert "google.colab" not in sys.modules
    namespace: dict = {}
    exec(colab.first_cell_source(), namespace)
    assert "setup_colab" not in namespace  # nothing imported, nothing downloaded, nothing installed


@pytest.mark.parametrize("version", [(3, 13), (3, 14)])
def test_colab_with_python_313_stops_with_how_to_switch(version):
    fake = FakeColab(installed=False)
    with pytest.raises(ColabSetupError) as error:
        setup_colab(version, fake.actions())
    message = str(error.value)
    assert f"Python {version[0]}.{version[1]}" in message
    assert "Python 3.12" in message and "Change runtime version" in message
    assert "3.10-3.12" in message  # the why
    assert fake.calls == []  # nothing was installed
    assert error.value._render_traceback_() == [f"\033[1m{message}\033[0m"]  # IPython shows the message alone


def test_colab_312_not_installed_installs_then_restarts():
    fake = FakeColab(installed=False)
    assert setup_colab((3, 12), fake.actions()) == "restarting"
    assert fake.calls == ["install", "restart"]
    assert fake.said[-1] == colab.RESTART_LINE
    assert "run this cell again" in colab.RESTART_LINE


def test_colab_312_installed_enables_widgets_and_goes_on(capsys):
    fake = FakeColab(installed=True, loaded_numpy="1.26.4")
    assert setup_colab((3, 12), fake.actions()) == "ready"
    assert fake.calls == ["widgets", "chdir"]
    assert fake.cwd == Path("/content/fhe-gpt2-course/notebooks")
    assert "Colab runtime ready" in capsys.readouterr().out


# --- the edges around them -----------------------------------------------------------------------------------------


def test_installed_but_old_numpy_still_loaded_restarts():
    fake = FakeColab(installed=True, loaded_numpy="2.1.3")
    assert setup_colab((3, 12), fake.actions()) == "restarting"
    assert fake.calls == ["restart"]
    assert "numpy 2.1.3" in fake.said[-1]


def test_an_install_that_leaves_the_wrong_versions_is_reported():
    fake = FakeColab(installed=False, install_works=False)
    with pytest.raises(ColabSetupError, match="not in place"):
        setup_colab((3, 12), fake.actions())
    assert fake.calls == ["install"]  # no restart into a broken runtime


def test_a_wrong_numpy_version_counts_as_not_installed():
    fake = FakeColab(installed=True)
    actions = fake.actions()
    actions.versions = lambda names: {name: ("2.1.3" if name == "numpy" else PINNED[name]) for name in names}
    assert not colab.course_is_installed(actions)


def test_install_clones_then_pip_installs_with_the_pins_as_constraints(tmp_path):
    clone = tmp_path / "course"
    commands: list[list[str]] = []

    def run(command):
        commands.append(list(command))
        if command[:2] == ["git", "clone"]:  # what the clone would bring
            clone.mkdir()
            (clone / "pyproject.toml").write_text("")
            (clone / "requirements.txt").write_text("ipython==9.18.1\nnumpy==1.26.4\ntorch==2.3.1\n")

    colab.install_course(clone, run)
    assert commands[0][:2] == ["git", "clone"] and commands[0][-2] == f"https://github.com/{colab.REPOSITORY}.git"
    assert commands[1][1:4] == ["-m", "pip", "install"]
    assert commands[1][-2:] == ["-e", str(clone)]
    assert (clone / "colab-constraints.txt").read_text() == "numpy==1.26.4\ntorch==2.3.1\n"
    colab.install_course(clone, run)  # a second install reuses the clone
    assert [c[:2] for c in commands[2:]] == [[sys.executable, "-m"]]


def test_colab_constraints_keep_markers():
    requirements = 'numpy==1.26.4\nfoo==1.0 ; platform_system == "Linux"\n# a comment\n-r other.txt\n'
    assert colab.colab_constraints(requirements) == 'numpy==1.26.4\nfoo==1.0 ; platform_system == "Linux"\n'


def test_colab_constraints_keep_every_pin_but_colabs_jupyter_layer():
    requirements = (ROOT / "requirements.txt").read_text()
    constraints = colab.colab_constraints(requirements).splitlines()
    names = {colab.distribution_key(line.split("==")[0]) for line in constraints}
    assert {"concrete-python", "concrete-ml", "numpy", "torch", "transformers"} <= names
    assert not names & colab.COLAB_OWNED
    pinned = [line for line in requirements.splitlines() if "==" in line and not line.startswith("#")]
    assert len(constraints) + len(colab.COLAB_OWNED) == len(pinned)  # every Colab-owned name is pinned there


def test_pinned_runtime_versions_match_requirements():
    requirements = (ROOT / "requirements.txt").read_text()
    for name, version in colab.PINNED_RUNTIME.items():
        assert f"\n{name}=={version}" in requirements


# --- the cell and the module as they run on a fresh Colab runtime -------------------------------------------------


@pytest.fixture
def on_colab(monkeypatch):
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))


def test_on_colab_with_the_course_installed_the_cell_runs_the_installed_setup(on_colab, monkeypatch):
    calls = []
    monkeypatch.setattr(colab, "setup_colab", lambda: calls.append("setup"))
    exec(colab.first_cell_source(), {})
    assert calls == ["setup"]


def test_on_a_fresh_colab_runtime_the_cell_downloads_the_installer(on_colab, monkeypatch):
    monkeypatch.setitem(sys.modules, "course_lib.colab", None)  # not installed: the import fails
    requested = []

    class Response:
        def read(self):
            return b"calls = []\ndef setup_colab():\n    calls.append('setup')\n"

    def fake_urlopen(url, timeout):
        requested.append((url, timeout))
        return Response()

    monkeypatch.setattr("urllib.request.urlopen", fake_urlopen)
    monkeypatch.setitem(sys.modules, "course_colab_installer", None)  # the cell replaces it; removed after the test
    namespace: dict = {}
    exec(colab.first_cell_source(), namespace)
    assert requested == [(colab.MODULE_URL, 60)]
    assert namespace["installer"].calls == ["setup"]
    assert sys.modules["course_colab_installer"] is namespace["installer"]


def test_the_module_runs_standalone_as_the_cell_runs_it(monkeypatch):
    """Executed from its source in a bare module (as the cell does before any install), it works as imported."""
    module = types.ModuleType("course_colab_installer")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # the cell registers it too (dataclasses need it)
    source = (ROOT / "course_lib" / "colab.py").read_bytes()
    exec(compile(source, "course_lib/colab.py", "exec"), module.__dict__)
    fake = FakeColab(installed=True, loaded_numpy="1.26.4")
    actions = module.ColabActions(**{name: getattr(fake.actions(), name) for name in ColabActions.__dataclass_fields__})
    assert module.setup_colab((3, 12), actions) == "ready"


def test_the_module_imports_only_the_standard_library_at_top_level():
    tree = ast.parse((ROOT / "course_lib" / "colab.py").read_text())
    top = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    names = {alias.name.split(".")[0] for node in top if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module.split(".")[0] for node in top if isinstance(node, ast.ImportFrom)}
    assert names <= set(sys.stdlib_module_names) | {"__future__"}


def test_the_module_url_serves_this_file():
    assert colab.MODULE_URL.endswith(f"/{colab.REPOSITORY}/{colab.BRANCH}/course_lib/colab.py")


# --- the notebooks and the README carry what the module generates ------------------------------------------------


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_each_notebook_starts_with_the_generated_badges_and_cell(path):
    notebook = nbformat.read(path, as_version=4)
    first_markdown = next(c for c in notebook.cells if c.cell_type == "markdown")
    first_code = next(c for c in notebook.cells if c.cell_type == "code")
    assert first_markdown.source.split("\n")[2] == colab.badges(path.name)
    assert first_code.source == colab.first_cell_source()


def test_readme_has_both_badges_of_every_notebook():
    readme = (ROOT / "README.md").read_text()
    for path in NOTEBOOKS:
        assert colab.colab_badge(path.name) in readme and colab.binder_badge(path.name) in readme
