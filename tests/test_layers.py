"""The package's layers: subpackages whose imports only point down, with no circles.

``LAYERS`` is the table of allowed arrows (``docs/architecture.md`` says what
each layer holds): a module may import from its own subpackage and from the
subpackages before its own in the list, never from one after it. The imports
are read from the source (top-level and inside functions alike), not run.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "gaussjax"

# Lowest first. "constants" is the model's numbers, below everything.
LAYERS = ("constants", "kernels", "core", "rendering", "fitting", "codec", "batch", "cli")


def _layer_of(module: str) -> str | None:
  """The layer of a dotted ``gaussjax...`` module name (None: the package root)."""
  parts = module.split(".")
  if parts[0] != "gaussjax" or len(parts) == 1:
    return None
  return parts[1] if parts[1] in LAYERS else None


def _modules():
  for path in sorted(PACKAGE.rglob("*.py")):
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    name = ".".join(rel.parts)
    if name.endswith(".__init__"):
      name = name[: -len(".__init__")]
    yield name, path


def _imports(name: str, path: pathlib.Path) -> set[str]:
  """Every ``gaussjax`` module ``name`` imports (resolving ``from x import submodule``)."""
  found = set()
  package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names if alias.name.startswith("gaussjax"))
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parent = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join(parent + ([base] if base else []))
      if not base.startswith("gaussjax"):
        continue
      for alias in node.names:
        candidate = f"{base}.{alias.name}"
        is_module = (PACKAGE.parent / (candidate.replace(".", "/") + ".py")).exists() or (
            PACKAGE.parent / candidate.replace(".", "/") / "__init__.py").exists()
        found.add(candidate if is_module else base)
  return found


GRAPH = {name: _imports(name, path) for name, path in _modules()}


def test_every_module_lives_in_a_layer():
  flat = [name for name in GRAPH if name.count(".") == 1 and _layer_of(name) is None
          and name not in ("gaussjax.__main__",)]
  assert flat == [], f"modules outside the layer subpackages: {flat}"


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_imports_point_down(name):
  layer = _layer_of(name)
  if layer is None:  # the package root re-exports the public API from every layer
    return
  rank = LAYERS.index(layer)
  for target in sorted(GRAPH[name]):
    target_layer = _layer_of(target)
    if target == "gaussjax":
      assert layer == "cli", f"{name} imports the public package; only the CLI may"
      continue
    assert target_layer is not None, f"{name} imports {target}, which is in no layer"
    assert LAYERS.index(target_layer) <= rank, (
        f"{name} (layer {layer!r}) imports {target} (layer {target_layer!r}, above it)")


# Circles inside one layer that are allowed: none (issue 19 removed the last
# ones). A pair listed here is skipped by the check below.
KNOWN_CIRCLES: set[frozenset[str]] = set()


def test_no_import_circles():
  def visit(node, stack, seen):
    for target in GRAPH.get(node, ()):
      if target not in GRAPH or _layer_of(target) is None:
        continue
      if target in stack:
        cycle = stack[stack.index(target):] + [target]
        if frozenset(cycle) in KNOWN_CIRCLES:
          continue
        raise AssertionError("import circle: " + " -> ".join(cycle))
      if target not in seen:
        seen.add(target)
        visit(target, stack + [target], seen)

  for name in GRAPH:
    if _layer_of(name) is not None:
      visit(name, [name], {name})


def test_the_table_sees_imports():
  # The checks above would pass vacuously if parsing found nothing.
  assert any(_layer_of(t) == "rendering" for t in GRAPH["gaussjax.fitting._fit"])
  for pair in KNOWN_CIRCLES:  # a circle that is gone leaves the list too
    a, b = sorted(pair)
    assert b in GRAPH[a] and a in GRAPH[b], f"{a} <-> {b} is no longer a circle: drop it"
