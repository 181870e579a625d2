"""Setting the course up on Google Colab: what the first code cell of every notebook runs there.

Colab is a hosted Jupyter runtime that does not have the course's packages. On Colab, the first
cell of each notebook calls :func:`setup_colab`, which moves through these states. Anywhere else
(``make lab``, Binder) the cell does nothing.

1. **Python 3.13 or later** (Colab's default runtime since 2026-08-25): concrete-python 2.10.0, the
   FHE compiler under concrete-ml 1.9.0, has wheels for Python 3.10 to 3.12 only, so nothing can be
   installed. The cell stops with :class:`ColabSetupError`, whose message says how to switch the
   session to a runtime version with Python 3.12.
2. **Python 3.12, course not installed**: the cell clones the course's repository into
   ``/content`` and installs it with pip, every version taken from the repository's
   ``requirements.txt`` (used as constraints), except the packages of Colab's own Jupyter layer
   (IPython, the kernel, the widgets), which stay Colab's. The pins replace Colab's preloaded
   numpy 2.x and torch with numpy 1.26.4 and torch 2.3.1. A process that has already imported the
   old versions would fail with "numpy.dtype size changed", so the cell then restarts the runtime:
   it prints one bold line and ends the kernel process, which Colab starts again at once.
3. **Python 3.12, course installed** (the same cell, run again after the restart): the cell turns
   on Colab's custom widget manager (the notebooks' sliders are ipywidgets) and changes the working
   directory to the clone's ``notebooks/`` folder, so that the notebooks read the repository's files
   by the same relative paths as on a laptop.

This module uses the standard library only: on a fresh runtime the first cell downloads it from
the repository and runs it before anything is installed. Every effect on the machine goes through
:class:`ColabActions`, so the tests drive all three states without Colab and without a network.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: The course's public repository on GitHub (owner/name), and the branch that Colab installs.
#: The badges and the notebooks' first cell are generated from these two
#: (``scripts/clean_notebooks.py``): change them here, then run that script.
REPOSITORY = "fhe-gpt2-course/fhe-gpt2-course"
BRANCH = "main"

#: Where the first cell finds this module before the course is installed.
MODULE_URL = f"https://raw.githubusercontent.com/{REPOSITORY}/{BRANCH}/course_lib/colab.py"
CLONE_DIR = Path("/content/fhe-gpt2-course")

#: The Python versions concrete-python 2.10.0 has wheels for.
SUPPORTED_PYTHONS = ((3, 10), (3, 11), (3, 12))

#: Versions that must be the ones in the running process for the course to work (from requirements.txt).
PINNED_RUNTIME = {"concrete-python": "2.10.0", "numpy": "1.26.4", "torch": "2.3.1"}

#: Colab's own Jupyter layer: kept at Colab's versions, never taken from the course's pins, because
#: Colab's front end talks to this kernel through them.
COLAB_OWNED = frozenset(
    {
        "comm",
        "debugpy",
        "ipykernel",
        "ipython",
        "ipython-pygments-lexers",
        "ipywidgets",
        "jupyter-client",
        "jupyter-core",
        "jupyter-server",
        "jupyterlab-widgets",
        "matplotlib-inline",
        "notebook-shim",
        "prompt-toolkit",
        "pyzmq",
        "tornado",
        "traitlets",
        "widgetsnbextension",
    }
)


class ColabSetupError(RuntimeError):
    """The course cannot run in this Colab runtime; the message says what to do.

    IPython shows only the message (no traceback) through ``_render_traceback_``.
    """

    def _render_traceback_(self) -> list[str]:
        return [f"\033[1m{self}\033[0m"]


def python_version_message(version: Sequence[int]) -> str:
    """What to tell a learner whose Colab runtime has an unsupported Python."""
    found = f"{version[0]}.{version[1]}"
    return (
        f"This Colab runtime runs Python {found}, but the course's FHE compiler (concrete-python 2.10.0, under "
        "concrete-ml 1.9.0) has wheels for Python 3.10-3.12 only, so it cannot be installed here.\n"
        "Switch this session to a runtime version with Python 3.12: menu Runtime > Change runtime type > "
        'Runtime version (or Ctrl+Shift+P, "Change runtime version"), pick the newest version that has '
        "Python 3.12, save, then run this cell again."
    )


def distribution_key(name: str) -> str:
    """A distribution name in the normalized form of PEP 503 (``Jupyter_Core`` -> ``jupyter-core``)."""
    return "-".join(name.replace("_", "-").replace(".", "-").lower().split("-"))


def colab_constraints(requirements: str) -> str:
    """The lines of requirements.txt that constrain an install on Colab: every pin but Colab's Jupyter layer."""
    kept = []
    for line in requirements.splitlines():
        spec = line.split(";")[0].strip()
        if not spec or spec.startswith(("#", "-")):
            continue
        name = spec.split("==")[0].split("[")[0].strip()
        if distribution_key(name) not in COLAB_OWNED:
            kept.append(line.strip())
    return "\n".join(kept) + "\n"


def installed_versions(names: Sequence[str]) -> dict[str, str | None]:
    """The installed version of each distribution, None where it is not installed."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def loaded_version(module: str) -> str | None:
    """The version of a module this process has already imported (None if it has not)."""
    loaded = sys.modules.get(module)
    return getattr(loaded, "__version__", None) if loaded is not None else None


def _run(command: Sequence[str]) -> None:
    print("$", " ".join(command), flush=True)
    subprocess.run(list(command), check=True)


def install_course(clone_dir: Path = CLONE_DIR, run: Callable[[Sequence[str]], None] = _run) -> None:
    """Clone the repository into ``clone_dir`` (once) and pip-install it with the course's pins as constraints."""
    if not (clone_dir / "pyproject.toml").exists():
        run(
            ["git", "clone", "--depth", "1", "--branch", BRANCH, f"https://github.com/{REPOSITORY}.git", str(clone_dir)]
        )
    constraints = clone_dir / "colab-constraints.txt"
    constraints.write_text(colab_constraints((clone_dir / "requirements.txt").read_text()))
    run([sys.executable, "-m", "pip", "install", "--quiet", "-c", str(constraints), "-e", str(clone_dir)])


def _say_bold(text: str) -> None:
    try:
        from IPython.display import Markdown, display

        display(Markdown(f"**{text}**"))
    except ImportError:  # not in IPython: plain text
        print(text)
    sys.stdout.flush()


def _restart_runtime() -> None:
    """End the kernel process: Colab notices at once and starts a fresh one (the notebook stays)."""
    import signal
    import time

    time.sleep(1)  # let the message reach the browser first
    os.kill(os.getpid(), signal.SIGKILL)


def _enable_widgets() -> None:
    from google.colab import output  # type: ignore[import-not-found]

    output.enable_custom_widget_manager()


@dataclass
class ColabActions:
    """Everything :func:`setup_colab` does to the machine, replaceable in tests."""

    install: Callable[[], None] = install_course
    restart: Callable[[], None] = _restart_runtime
    enable_widgets: Callable[[], None] = _enable_widgets
    say: Callable[[str], None] = _say_bold
    chdir: Callable[[Path], None] = os.chdir
    versions: Callable[[Sequence[str]], dict[str, str | None]] = installed_versions
    loaded: Callable[[str], str | None] = loaded_version
    notebooks_dir: Path = field(default=CLONE_DIR / "notebooks")


def course_is_installed(actions: ColabActions) -> bool:
    """True when course_lib is installed and the pinned runtime packages have the pinned versions."""
    versions = actions.versions(["course_lib", *PINNED_RUNTIME])
    if versions["course_lib"] is None:
        return False
    return all(versions[name] == pinned for name, pinned in PINNED_RUNTIME.items())


def stale_modules(actions: ColabActions) -> list[str]:
    """Modules this process imported at another version than the pinned one (they need a restart)."""
    stale = []
    for module, pinned in (("numpy", PINNED_RUNTIME["numpy"]), ("torch", PINNED_RUNTIME["torch"])):
        version = actions.loaded(module)
        if version is not None and version.split("+")[0] != pinned:
            stale.append(f"{module} {version}")
    return stale


RESTART_LINE = (
    "The course is installed. The runtime restarts now to load numpy 1.26.4 and torch 2.3.1: "
    "when it has reconnected, run this cell again (or Runtime > Run all)."
)


def setup_colab(version: Sequence[int] | None = None, actions: ColabActions | None = None) -> str:
    """Bring a Colab runtime to the state where the notebook runs; returns the state reached.

    Returns ``"ready"`` when the course is installed and loaded, or ``"restarting"`` after an
    install (the kernel is ended right after, on Colab). Raises :class:`ColabSetupError` on a
    Python the course's packages do not support.
    """
    version = tuple(sys.version_info[:2] if version is None else version[:2])
    actions = actions or ColabActions()
    if version not in SUPPORTED_PYTHONS:
        raise ColabSetupError(python_version_message(version))
    if not course_is_installed(actions):
        actions.say("Installing the course and its pinned packages (about 3 minutes on Colab)...")
        actions.install()
        if not course_is_installed(actions):
            found = actions.versions(["course_lib", *PINNED_RUNTIME])
            raise ColabSetupError(f"The install finished but the course's packages are not in place: {found}.")
        actions.say(RESTART_LINE)
        actions.restart()
        return "restarting"
    stale = stale_modules(actions)
    if stale:  # installed in this process's lifetime: the old numpy/torch are still in memory
        actions.say(f"This runtime still has {', '.join(stale)} in memory. " + RESTART_LINE)
        actions.restart()
        return "restarting"
    actions.enable_widgets()
    actions.chdir(actions.notebooks_dir)
    print(f"Colab runtime ready: Python {version[0]}.{version[1]}, course installed in {actions.notebooks_dir.parent}.")
    return "ready"


# --- What the notebooks carry (written into them by scripts/clean_notebooks.py) ---------------------------


def first_cell_source() -> str:
    """The first code cell of every notebook: on Colab it runs :func:`setup_colab`, elsewhere nothing."""
    return f'''# Google Colab only: installs the course there (then the runtime restarts once: run this cell again).
# Anywhere else (make lab, Binder) this cell does nothing.
import sys

if "google.colab" in sys.modules:
    try:
        from course_lib.colab import setup_colab
    except ImportError:  # a fresh runtime: take the installer from the course's repository
        import types
        import urllib.request

        installer = sys.modules["course_colab_installer"] = types.ModuleType("course_colab_installer")
        url = "{MODULE_URL}"
        source = urllib.request.urlopen(url, timeout=60).read()
        exec(compile(source, "course_lib/colab.py", "exec"), installer.__dict__)
        setup_colab = installer.setup_colab
    setup_colab()'''


def colab_url(notebook: str) -> str:
    """The address that opens ``notebooks/<notebook>`` of the repository in Colab."""
    return f"https://colab.research.google.com/github/{REPOSITORY}/blob/{BRANCH}/notebooks/{notebook}"


def colab_badge(notebook: str) -> str:
    """The "Open in Colab" badge of one notebook, as Markdown."""
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(notebook)})"


def binder_badge(notebook: str) -> str:
    """The "launch Binder" badge of one notebook (mybinder.org builds the repository's binder/ folder)."""
    url = f"https://mybinder.org/v2/gh/{REPOSITORY}/{BRANCH}?urlpath=lab/tree/notebooks/{notebook}"
    return f"[![Binder](https://mybinder.org/badge_logo.svg)]({url})"


def badges(notebook: str) -> str:
    """Both badges of a notebook, on one Markdown line."""
    return f"{colab_badge(notebook)} {binder_badge(notebook)}"
