"""The definitions load and the asset graph has the expected keys, groups and dependencies."""

import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
from supportdesk import USE_CASE

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [s.name for s in USE_CASE.sources]


def test_the_asset_graph_has_every_stage_of_every_source() -> None:
    from definitions import defs

    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    expected = {f"{stage}_{s}" for stage in ("raw", "bronze", "silver") for s in SOURCES}
    assert expected <= keys
    for source in SOURCES:
        assert graph.get(dg.AssetKey(f"raw_{source}")).group_name == "raw"
        assert graph.get(dg.AssetKey(f"bronze_{source}")).group_name == "bronze"
        assert graph.get(dg.AssetKey(f"silver_{source}")).group_name == "silver"
        assert graph.get(dg.AssetKey(f"bronze_{source}")).parent_keys == {dg.AssetKey(f"raw_{source}")}
        assert graph.get(dg.AssetKey(f"silver_{source}")).parent_keys == {dg.AssetKey(f"bronze_{source}")}
    checks = {(c.asset_key.to_user_string(), c.name) for c in graph.asset_check_keys}
    assert {(f"bronze_{s}", "bad_rows_below_threshold") for s in SOURCES} <= checks
    assert {(f"raw_{s}", "matches_contract") for s in SOURCES} <= checks
    assert defs.resolve_job_def("data_layer") is not None


def test_definitions_load_without_importing_great_expectations_or_starting_spark() -> None:
    code = ("import sys; import definitions; "
            "print('great_expectations' in sys.modules, 'pysail' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False False False"


def test_the_engine_never_imports_dagster() -> None:
    offenders = [str(p) for p in (ROOT / "platform" / "loopwise").rglob("*.py")
                 if "import dagster" in p.read_text() or "from dagster" in p.read_text()]
    assert offenders == []
    assert not (ROOT / "platform" / "__init__.py").exists()  # would shadow the standard library's platform


def test_the_engine_names_no_domain() -> None:
    """The engine is generic: the reference use case's words live in platform/supportdesk/ and feature_repo/."""
    words = re.compile(r"ticket|escalat|customer|refund|order_", re.IGNORECASE)
    offenders = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}" for p in (ROOT / "platform" / "loopwise").rglob("*")
                 if p.suffix in (".py", ".yaml") for n, line in enumerate(p.read_text().splitlines(), 1)
                 if words.search(line)]
    assert offenders == []


def test_every_declared_model_has_its_own_group_of_assets() -> None:
    from assets.models import keys
    from definitions import defs

    graph = defs.resolve_asset_graph()
    for spec in USE_CASE.models:
        k = keys(spec)
        assert {graph.get(key).group_name for key in k.values()} == {spec.slug}
        assert graph.get(k["trained_model"]).parent_keys == {k["training_set"]}
        assert graph.get(k["registered_model"]).parent_keys == {k["model_evaluation"]}
        assert graph.get(k["deployed_endpoint"]).parent_keys == {k["registered_model"]}
        assert {f"silver_{s}" for s in spec.reads} <= {p.to_user_string() for p in graph.get(k["training_set"]).parent_keys}
        assert (k["registered_model"], "passes_gate") in {(c.asset_key, c.name) for c in graph.asset_check_keys}


def test_the_workspace_loads_in_dagster_tooling() -> None:
    out = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]


def test_every_library_the_platform_imports_is_declared() -> None:
    """A clean install gets everything the code imports: no dependency arrives only by chance through another."""
    import ast
    import tomllib
    from importlib.metadata import packages_distributions

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    declared = {norm(re.split(r"[\s\[<>=~!;]", d, maxsplit=1)[0])
                for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    local = {"loopwise", "supportdesk", "assets", "resources", "jobs", "sensors", "definitions", "tests",
             "feature_views", "entities", "data_sources", "feature_services"}
    imported: set[str] = set()
    for folder in ("platform", "assets", "resources", "jobs", "sensors", "feature_repo"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imported |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    imported.add(node.module.split(".")[0])
    distributions = packages_distributions()
    missing = sorted({f"{module} ({', '.join(distributions[module])})" for module in imported - local - set(sys.stdlib_module_names)
                      if module in distributions and not declared & {norm(d) for d in distributions[module]}})
    assert missing == []
