"""course_lib.contract: the routes, the artifact's file names and the circuit's description, shared by both sides.

No circuit is compiled here: the description is checked on hand-written values (the server's tests check
the one a compiled circuit publishes).
"""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from course_lib import contract
from course_lib.contract import (
    CIRCUIT_FILE,
    CLOSE_SESSION,
    ROUTES,
    RUN,
    SERVER_FILE,
    STEP,
    CircuitDescription,
    DescriptionError,
    layer_function,
)

ROOT = Path(__file__).resolve().parents[1]

FIELDS = {
    "fingerprint": "0123abcd",
    "length": 4,
    "scope": "attention",
    "inputs": ["q", "k", "v"],
    "input_shape": [4, 8],
    "queries": 4,
    "heads": 2,
    "n_bits": 4,
    "input_bytes": 786816,
}


def test_a_description_survives_json_and_the_artifact_folder(tmp_path):
    description = CircuitDescription.from_dict(FIELDS)
    assert description.inputs == ("q", "k", "v") and description.input_shape == (4, 8)  # lists become tuples
    assert CircuitDescription.from_json(description.to_json()) == description
    assert json.loads(description.to_json()) == FIELDS == description.to_dict()
    path = description.save(tmp_path)
    assert path == tmp_path / CIRCUIT_FILE
    assert CircuitDescription.load(tmp_path) == description
    with pytest.raises(AttributeError):
        description.length = 5  # frozen


LAYER_FIELDS = {**FIELDS, "scope": "layer", "inputs": ["x"], "input_shape": [1, 16], "queries": 1, "heads": 4}


def test_a_layer_takes_one_token_per_step():
    description = CircuitDescription.from_dict(LAYER_FIELDS)
    assert description.input_shape == (1, 16) and description.length == 4
    assert layer_function(3) == "step_3"
    with pytest.raises(DescriptionError, match=r"must have 1 row for scope 'layer' \(one token per step\)"):
        CircuitDescription.from_dict({**LAYER_FIELDS, "input_shape": [4, 16]})
    with pytest.raises(DescriptionError, match="'queries' must be 1 for scope 'layer', got 4"):
        CircuitDescription.from_dict({**LAYER_FIELDS, "queries": 4})


def test_the_inputs_size_is_optional():
    fields = {name: value for name, value in FIELDS.items() if name != "input_bytes"}
    assert CircuitDescription.from_dict(fields).input_bytes is None


def test_missing_and_unknown_fields_are_named():
    fields = {name: value for name, value in FIELDS.items() if name not in ("fingerprint", "queries")}
    with pytest.raises(DescriptionError, match="lacks the field.*'fingerprint', 'queries'"):
        CircuitDescription.from_dict(fields)
    with pytest.raises(DescriptionError, match="unknown field.*'lenght'"):
        CircuitDescription.from_dict({**FIELDS, "lenght": 4})
    with pytest.raises(DescriptionError, match="JSON object, got list"):
        CircuitDescription.from_dict([FIELDS])
    with pytest.raises(DescriptionError, match="not valid JSON"):
        CircuitDescription.from_json('{"fingerprint": ')


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("fingerprint", "", "'fingerprint' must be a non-empty string"),
        ("fingerprint", 12, "'fingerprint' must be a non-empty string"),
        ("length", 0, "'length' must be a positive integer"),
        ("length", "4", "'length' must be a positive integer"),
        ("heads", True, "'heads' must be a positive integer"),
        ("n_bits", 2.5, "'n_bits' must be a positive integer"),
        ("input_bytes", -1, "'input_bytes' must be a positive integer"),
        ("scope", "everything", "'scope' must be one of 'attention', 'projection\\+attention'"),
        ("inputs", ["x"], r"'inputs' must be \['q', 'k', 'v'\] for scope 'attention'"),
        ("inputs", "qkv", "'inputs' must be a list"),
        ("input_shape", [4], r"'input_shape' must be \[rows, columns\]"),
        ("input_shape", [3, 8], "'input_shape' must have length=4 rows"),
        ("input_shape", [4, 0], "'input_shape' must be a positive integer"),
        ("queries", 5, "'queries' must be at most length=4"),
    ],
)
def test_a_wrong_value_is_named(field, value, message):
    with pytest.raises(DescriptionError, match=message):
        CircuitDescription.from_dict({**FIELDS, field: value})


def test_a_description_made_in_code_is_checked_too():
    with pytest.raises(DescriptionError, match="'inputs' must be \\['x'\\] for scope 'projection\\+attention'"):
        CircuitDescription(**{**FIELDS, "scope": "projection+attention"})
    made = CircuitDescription(**{**FIELDS, "scope": "projection+attention", "inputs": ("x",), "heads": 1})
    assert made.inputs == ("x",)


def test_a_bad_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no circuit description at .*HeadCircuit.save_server"):
        CircuitDescription.load(tmp_path)
    (tmp_path / CIRCUIT_FILE).write_text(json.dumps({**FIELDS, "length": -4}))
    with pytest.raises(DescriptionError, match=f"{CIRCUIT_FILE}: .*'length' must be a positive integer"):
        CircuitDescription.load(tmp_path)


def test_routes_fill_their_parameters():
    assert RUN.path(session="ab12") == "/sessions/ab12/run"
    assert CLOSE_SESSION.path(session="a/b c") == "/sessions/a%2Fb%20c"  # quoted: one path segment
    assert str(CLOSE_SESSION) == "DELETE /sessions/{session}"
    with pytest.raises(ValueError, match="needs the parameter 'session'"):
        RUN.path()
    with pytest.raises(ValueError, match="has no parameter 'id'"):
        RUN.path(session="ab12", id="x")
    assert len({(r.method, r.template) for r in ROUTES}) == len(ROUTES) == 7
    assert STEP.path(session="ab12", position="3") == "/sessions/ab12/tokens/3"


def test_the_contract_imports_the_standard_library_only():
    """fhe imports the contract at module level: it must not import concrete, torch or the HTTP stack back."""
    heavy = ("concrete", "torch", "transformers", "fastapi", "starlette", "requests", "numpy", "course_lib.fhe")
    code = f"import sys, course_lib.contract; print([m for m in {heavy!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"
    tree = ast.parse(Path(contract.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 0}
    assert all(name.split(".")[0] in sys.stdlib_module_names or name == "__future__" for name in imported)


def test_no_other_file_writes_a_route_or_an_artifact_name():
    """The strings live in course_lib.contract only: the library and the tests use its names."""
    route = re.compile(r"(^|[^\w.])/(health|circuit|sessions)\b")
    offenders = []
    for path in [*(ROOT / "course_lib").rglob("*.py"), *(ROOT / "tests").glob("*.py")]:
        if path.name in ("contract.py", "test_contract.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
                if SERVER_FILE in text or CIRCUIT_FILE in text or route.search(text):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {text[:60]!r}")
    assert not offenders, "write these with course_lib.contract's names:\n" + "\n".join(offenders)
