"""The shape of the code: harness modules import each other in one direction only, no module
reaches for another's private (underscore) names, and the repository points at nothing
outside itself. Read with `ast`, so that an import inside a function counts as much as one
at the top of a module: a late import that dodges a cycle is still a cycle."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

from harness import project_root

ROOT = project_root()
PACKAGE = ROOT / "harness"


def module_names(package: Path = PACKAGE) -> dict[str, Path]:
    """{dotted module name: file} of every module under `package`; a package's __init__.py
    is that package."""
    names = {}
    for file in sorted(package.rglob("*.py")):
        parts = list(file.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = file
    return names


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The module an ImportFrom names, with relative imports resolved against `module`."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(source: str, module: str, modules: set[str], is_package: bool = False):
    """What the module `module` (of source `source`) takes from the others of `modules`.

    Returns (edges, private): the set of modules it imports, at any depth of the code, and
    the list of (line, "harness.x._y") private names of another module that it uses."""
    edges, private = set(), []
    aliases: dict[str, str] = {}  # local name -> a module of `modules`

    def owner(dotted: str) -> str | None:
        """The longest prefix of `dotted` that is one of `modules`."""
        parts = dotted.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in modules:
                return ".".join(parts[:n])
        return None

    def use(target: str, line: int, name: str | None = None) -> None:
        if target != module:
            edges.add(target)
            if name is not None and name.startswith("_") and not name.startswith("__"):
                private.append((line, f"{target}.{name}"))

    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = owner(alias.name)
                if target is None:
                    continue
                rest = alias.name[len(target) + 1:].split(".") if alias.name != target else []
                use(target, node.lineno, rest[0] if rest else None)
                if alias.asname:
                    aliases[alias.asname] = target
                elif alias.name.split(".")[0] in modules:
                    aliases.setdefault(alias.name.split(".")[0], alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            source_module = _absolute(node, module, is_package)
            target = owner(source_module)
            if target is None:
                continue
            for alias in node.names:
                submodule = f"{source_module}.{alias.name}"
                if submodule in modules:  # `from harness.analysis import read`: the module read
                    use(submodule, node.lineno)
                    aliases[alias.asname or alias.name] = submodule
                else:
                    use(target, node.lineno, alias.name)
    for node in ast.walk(tree):  # `module._name` through a name bound to a harness module
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            dotted = _dotted(node.value)
            if dotted is None:
                continue
            head, *rest = dotted.split(".")
            if head in aliases:
                target = owner(".".join([aliases[head], *rest]))
                if target is not None and target != module:
                    private.append((node.lineno, f"{target}.{node.attr}"))
    return edges, sorted(private)


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return None if head is None else f"{head}.{node.attr}"
    return None


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph, as [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def import_graph(package: Path = PACKAGE):
    """(graph {module: modules it imports}, [(file:line, private name)]) of a package."""
    modules = module_names(package)
    graph, private = {}, []
    for name, file in modules.items():
        edges, used = imports_of(file.read_text(), name, set(modules), file.name == "__init__.py")
        graph[name] = edges
        private += [(f"{file.relative_to(package.parent)}:{line}", what) for line, what in used]
    return graph, private


def top_level_names(source: str) -> tuple[set[str], dict[str, str]]:
    """(names a module defines at its top level, {name: where from} of what it imports there),
    the `where from` being the absolute module of a `from ... import`."""
    defined, imported = set(), {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.If, ast.Try)):  # a guarded definition still defines
            nodes = [n for n in ast.walk(node) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Assign))]
        else:
            nodes = [node]
        for n in nodes:
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(n.name)
            elif isinstance(n, (ast.Assign, ast.AnnAssign)):
                targets = n.targets if isinstance(n, ast.Assign) else [n.target]
                defined |= {name.id for t in targets for name in ast.walk(t) if isinstance(name, ast.Name)}
            elif isinstance(n, ast.ImportFrom):
                imported.update({alias.asname or alias.name: n.module or "" for alias in n.names})
            elif isinstance(n, ast.Import):
                imported.update({alias.asname or alias.name.split(".")[0]: alias.name for alias in n.names})
    return defined, imported


def borrowed_names(files, package: Path = PACKAGE) -> list[str]:
    """`from harness.a import n` in `files` where module a does not define n but imports it
    itself from elsewhere: a second address for a name. A package gathering the names of its
    own submodules (harness.training.engine's steps) is their one address, and allowed."""
    modules = module_names(package)
    tops = {name: top_level_names(file.read_text()) for name, file in modules.items()}
    found = []
    for file in files:
        for node in ast.walk(ast.parse(Path(file).read_text())):
            if not isinstance(node, ast.ImportFrom) or node.level or node.module not in modules:
                continue
            defined, imported = tops[node.module]
            for alias in node.names:
                origin = imported.get(alias.name)
                if (f"{node.module}.{alias.name}" in modules or alias.name in defined or origin is None
                        or origin.startswith(node.module + ".")):
                    continue
                found.append(f"{file}:{node.lineno}: {alias.name} from {node.module}, which has it from {origin}")
    return found


# ------------------------------------------------------------------ the checks themselves


def test_the_checks_find_a_cycle_and_a_private_import():
    """The functions below catch what they are for (so that their silence means something)."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]
    modules = {"harness", "harness.cells", "harness.weights", "harness.analysis", "harness.analysis.read"}
    late = "def f():\n    from harness.cells import make_layer\n"
    assert imports_of(late, "harness.weights", modules)[0] == {"harness.cells"}
    edges, private = imports_of("from harness.weights import _copy, import_into\n", "harness.cells", modules)
    assert edges == {"harness.weights"} and private == [(1, "harness.weights._copy")]
    edges, private = imports_of("from . import read\nfrom .read import _row\n", "harness.analysis", modules,
                                is_package=True)
    assert edges == {"harness.analysis.read"} and private == [(2, "harness.analysis.read._row")]
    source = ("import harness.weights as w\nimport harness.cells\nfrom harness import cells\n"
              "w._copy()\ncells._views\nharness.cells._x\n")
    assert [what for _, what in imports_of(source, "harness.analysis", modules)[1]] == [
        "harness.weights._copy", "harness.cells._views", "harness.cells._x"]
    assert imports_of("import harness.cells\nharness.cells.__doc__\n", "harness.analysis", modules)[1] == []


def test_a_planted_cycle_in_a_copy_of_the_package_is_found(tmp_path):
    """A late import planted in a copy of two real modules closes a loop the check reports."""
    copy = tmp_path / "harness"
    copy.mkdir()
    (copy / "__init__.py").write_text("")
    (copy / "weights.py").write_text((PACKAGE / "models" / "weights.py").read_text()
                                     + "\n\ndef planted():\n    from harness import cells\n")
    (copy / "cells.py").write_text("from harness.weights import import_into\n")
    graph, _ = import_graph(copy)
    assert find_cycle(graph) == ["harness.cells", "harness.weights", "harness.cells"]


def test_no_import_cycle_among_harness_modules():
    graph, _ = import_graph()
    assert len(graph) > 20 and graph["harness.cli"], "the graph was not read"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# The stages of a study, first to last, with the parts below and above them (docs/architecture.md):
# a module imports only from its own part or an earlier one.
LAYERS = (
    ("harness", "harness.errors", "harness.schema"),  # project_root, the errors, the config types
    ("harness.kernels",),    # the compiled time loops
    ("harness.datasets",),   # data: readers, stand-ins, splits
    ("harness.models",),     # the cells and networks
    ("harness.training",),   # one configuration trained: recipes, tasks, engines, lockstep
    ("harness.storage",),    # a study's storage: opening it, counting its trials, its protocol
    ("harness.analysis",),   # verdicts, fANOVA, the report and its figures
    ("harness.study",),      # sweeps and their rounds, launchers
    ("harness.bench", "harness.validate", "harness.cli"),  # the command line and what it runs
)


def layer_of(module: str) -> int:
    """The index in LAYERS of the part that holds `module` (its longest prefix there)."""
    parts = [(len(part), index) for index, layer in enumerate(LAYERS) for part in layer
             if module == part or module.startswith(part + ".")]
    assert parts, f"{module} is in no part of LAYERS: place it there"
    return max(parts)[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{module} -> {target}" for module, targets in graph.items() for target in targets
                  if layer_of(target) > layer_of(module))


def test_the_stages_import_only_downward():
    graph, _ = import_graph()
    assert not upward_imports(graph), "imports of a later stage: " + "; ".join(upward_imports(graph))
    top = sorted(entry.name for entry in PACKAGE.iterdir() if entry.name != "__pycache__")
    assert len(top) <= 14, f"harness/ has {len(top)} entries at its top: {top}"
    assert {f"harness.{Path(name).stem}" for name in top if name != "__init__.py"} == {
        part for layer in LAYERS for part in layer} - {"harness"}


def test_the_layer_check_finds_an_upward_import():
    graph = {"harness.models.cells": {"harness.kernels"}, "harness.datasets": {"harness.training.ctc"},
             "harness.study.rounds": {"harness.analysis.sequential"}}
    assert upward_imports(graph) == ["harness.datasets -> harness.training.ctc"]


def test_no_module_uses_another_modules_private_names():
    _, private = import_graph()
    assert not private, "private names used across modules: " + "; ".join(f"{where} {what}"
                                                                          for where, what in private)


def test_the_borrowed_name_check_finds_a_second_address(tmp_path):
    copy = tmp_path / "harness"
    (copy / "engine").mkdir(parents=True)
    (copy / "__init__.py").write_text("")
    (copy / "storage.py").write_text("def open_storage(url):\n    return url\n")
    (copy / "sweep.py").write_text("from harness.storage import open_storage\n")
    (copy / "engine" / "__init__.py").write_text("from harness.engine.native import NativeStep\n")
    (copy / "engine" / "native.py").write_text("class NativeStep:\n    pass\n")
    user = tmp_path / "test_user.py"
    user.write_text("from harness.sweep import open_storage\nfrom harness.storage import open_storage\n"
                    "from harness.engine import NativeStep\n")
    assert borrowed_names([user], copy) == [f"{user}:1: open_storage from harness.sweep, which has it from "
                                            "harness.storage"]


def test_every_name_is_imported_from_where_it_is_defined():
    """One address for each name: code and tests import a function from its own module,
    not from another module that happens to import it (a re-export is a second address)."""
    files = [file for folder in ("harness", "tests", "scripts") for file in sorted((ROOT / folder).rglob("*.py"))]
    found = borrowed_names(files)
    assert not found, "names imported from a module that only borrows them:\n" + "\n".join(found)


def test_nothing_in_the_repository_points_outside_it():
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    # a folder beside the checkout, or a brief that is not in it (by file name or by its
    # sections); the words are spelled apart so that this file does not match itself
    outside = re.compile(r"\.\./" + "sha" + "red" + r"|\b" + "SP" + "EC" + r"\b")
    found = []
    for name in listed.decode().split("\0"):
        file = ROOT / name
        if not name or not file.is_file():
            continue
        try:
            text = file.read_text()
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            found += [f"{name}:{number}: {line.strip()}" for _ in outside.finditer(line)][:1]
    assert not found, "pointers outside the repository:\n" + "\n".join(found)


def test_every_pointer_into_docs_finds_its_page_and_section():
    """A page of docs/ named in any tracked file exists, and a section named after it (the
    page, a comma, the section in double quotes) is a heading of that page."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True).stdout.decode()
    pointer = re.compile(r'docs/([A-Za-z_]+\.md)(?:, "([^"]+)")?')
    missing = []
    for name in filter(None, listed.split("\0")):
        file = ROOT / name
        if not file.is_file() or file.suffix not in (".py", ".md", ".yaml", ".sh", ".toml", ".cpp", ".h"):
            continue
        for number, line in enumerate(file.read_text().splitlines(), start=1):
            for page, section in pointer.findall(line):
                target = ROOT / "docs" / page
                if not target.is_file():
                    missing.append(f"{name}:{number}: docs/{page}")
                elif section and not any(row.startswith("#") and section.lower() in row.lower()
                                         for row in target.read_text().splitlines()):
                    missing.append(f"{name}:{number}: docs/{page}, \"{section}\"")
    assert not missing, "pointers to no page or section: " + "; ".join(missing)


def test_the_readme_links_the_architecture_page_and_every_link_resolves():
    readme = (ROOT / "README.md").read_text()
    assert "(docs/architecture.md)" in readme
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, "links to nothing: " + ", ".join(broken)



# ------------------------------------------------ what the docs and docstrings name exists

DOC_FILES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md", *sorted(PACKAGE.rglob("*.py")),
             *sorted((ROOT / "conf").rglob("*.yaml")), *sorted((ROOT / "scripts").glob("*.py"))]
DOTTED = re.compile(r"(?<![\w/.])harness(?:\.[A-Za-z_]\w*)+")
NAME_IN_PATH = re.compile(r"`([A-Za-z_][\w.]*)`,?\s+(?:in|of|from)\s+`?((?:harness|scripts|tests)/[\w/]*\w\.py)`?")
PROJECT_PATH = re.compile(r"(?<![\w/.])((?:harness|scripts|tests|conf|docs)/[\w/.-]*\w\.(?:py|md|yaml|sh))")


def defined_names(body) -> dict:
    """{name: node} of what a module or class body defines or imports at its top level."""
    found = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                found.update({n.id: node for n in ast.walk(target) if isinstance(n, ast.Name)})
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            found.update({(alias.asname or alias.name).split(".")[0]: node for alias in node.names})
    return found


def resolves(file: Path, names: list[str]) -> bool:
    """Whether `names` (["Class", "method"] or ["function"]) are defined in `file`."""
    scope = defined_names(ast.parse(file.read_text()).body)
    for k, name in enumerate(names):
        if name not in scope:
            return False
        node = scope[name]
        if not isinstance(node, ast.ClassDef):
            return k == len(names) - 1 or isinstance(node, (ast.Import, ast.ImportFrom))
        scope = defined_names(node.body)
    return True


def module_file(parts: list[str]) -> Path | None:
    path = ROOT.joinpath(*parts)
    return next((p for p in (path.with_suffix(".py"), path / "__init__.py") if p.is_file()), None)


def stale_references(files) -> list[str]:
    """Every `harness.module.name`, every "`name` in harness/path.py" and every project path
    that the text of `files` mentions and that does not exist (NAME, <...>: placeholders)."""
    stale = []
    for file in files:
        text = file.read_text()
        where = file.relative_to(ROOT) if file.is_relative_to(ROOT) else file.name
        for match in DOTTED.finditer(text):
            parts = match.group(0).split(".")
            k = next((k for k in range(len(parts), 0, -1) if module_file(parts[:k])), 0)
            if k == 1 and len(parts) > 1 and not resolves(module_file(parts[:1]), parts[1:2]):
                stale.append(f"{where}: {match.group(0)} (no module {'.'.join(parts[:2])})")
            elif k > 1 and parts[k:] and not resolves(module_file(parts[:k]), parts[k:]):
                stale.append(f"{where}: {match.group(0)}")
        for match in NAME_IN_PATH.finditer(text):
            name, path = match.groups()
            if not (ROOT / path).is_file() or not resolves(ROOT / path, name.split(".")):
                stale.append(f"{where}: `{name}` in {path}")
        for match in PROJECT_PATH.finditer(text):
            if "NAME" not in match.group(1) and not (ROOT / match.group(1)).exists():
                stale.append(f"{where}: {match.group(1)}")
    return stale


def test_the_reference_check_finds_a_moved_name(tmp_path):
    page = tmp_path / "probe.md"
    page.write_text("`make_layer` in harness/models/cells.py; `PRESETS` in harness/models/cells.py; "
                    "harness.study.sweep.no_such; harness.storage.Liveness.fail_stale; see harness/nowhere.py\n")
    assert stale_references([page]) == ["probe.md: harness.study.sweep.no_such",
                                        "probe.md: `PRESETS` in harness/models/cells.py", "probe.md: harness/nowhere.py"]


def test_every_name_and_path_the_docs_and_docstrings_mention_exists():
    """One place for each fact, and the pointers to it right: "`PRESETS` in harness/models/__init__.py",
    harness.storage.Liveness, conf/search/greff.yaml, ... in docs/, the README, docstrings,
    comments and configs all name something that is there."""
    stale = stale_references(DOC_FILES)
    assert not stale, "names or paths that do not exist where the text says:\n" + "\n".join(stale)


def test_a_moved_module_still_imports_by_its_old_path():
    """harness.MOVED: the paths modules had before harness/ was grouped by stages still import,
    as the module at its new place (a user's `_target_`, a user's `from ... import`)."""
    import importlib

    from hydra.utils import get_class

    import harness
    from harness.models.minimal import MinGRU

    for old, new in harness.MOVED.items():
        importlib.import_module(f"harness.{new}")  # every new path is real
    from harness.cells import make_layer  # noqa: the old path, on purpose
    from harness.models.cells import make_layer as at_its_place
    assert make_layer is at_its_place
    old_native = importlib.import_module("harness.engine.native")  # inside a moved package
    assert old_native.NativeStep is importlib.import_module("harness.training.engine.native").NativeStep
    assert get_class("harness.minimal.MinGRU") is MinGRU
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("harness.no_such_module")
