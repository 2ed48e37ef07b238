"""Drift checks: Evidently 0.7's DataDriftPreset against Loopwise's profile-once checks, verdicts and speed.

Evidently runs in its own virtual environment (`benchmarks/.evidently-venv`, created on first use with
`python3.11 -m venv` and `pip install "evidently==0.7.*" "pandas<3"`: it clashes with the project's pins), in a
subprocess over the same Parquet files Loopwise reads. Both use Evidently's default column tests and
thresholds (and, in the override rows, the same overrides).

- Agreement: Gaussians (same, shifted, scaled, one shifted by about the threshold), Student t and lognormal
  tails, mixtures, nulls, few-valued and binary numerics, a score, wide integers, categoricals (few levels,
  binary, 300 levels, unseen levels), at references of more and of at most 1,000 rows, over several seeds.
  Per column: the test chosen and the verdict must be identical; the dataset verdict too (Loopwise counting
  value drift only, as Evidently does). Loopwise checks from the profile after a JSON round trip.
- Speed: 20 numeric columns, reference and current of 100,000 and 1,000,000 rows each; Evidently's time is its
  report's run, Loopwise's the check of the current day against the profile (profiling reported apart).

    python benchmarks/drift.py [--rows 1000000] [--seeds 3] [--skip-speed]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from loopwise.monitoring import ColumnTest, DriftConfig, ReferenceProfile, check_drift, profile_reference

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, commit, load_average, machine

EVIDENTLY_VENV = Path(__file__).with_name(".evidently-venv")
EVIDENTLY_TEST_NAMES = {"Wasserstein distance (normed)": "wasserstein", "Jensen-Shannon distance": "jensenshannon",
                        "K-S p_value": "ks", "chi-square p_value": "chisquare", "Z-test p_value": "z", "PSI": "psi"}

EVIDENTLY_RUNNER = r'''
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import pandas as pd
import evidently
from evidently import DataDefinition, Dataset, Report
from evidently.presets import DataDriftPreset

results = []
for job in json.load(open(sys.argv[1])):
    reference, current = pd.read_parquet(job["reference"]), pd.read_parquet(job["current"])
    definition = DataDefinition(numerical_columns=job["numerical"], categorical_columns=job["categorical"])
    start = time.perf_counter()
    snapshot = Report([DataDriftPreset(**job["preset"])], include_tests=True).run(
        Dataset.from_pandas(current, data_definition=definition), Dataset.from_pandas(reference, data_definition=definition))
    seconds = time.perf_counter() - start
    result = snapshot.dict()
    columns, share, dataset = {}, None, None
    for metric in result["metrics"]:
        config = metric["config"]
        if config["type"].endswith("ValueDrift"):
            columns[config["column"]] = {"method": config["method"], "threshold": config["threshold"], "score": metric["value"]}
        elif config["type"].endswith("DriftedColumnsCount"):
            share = metric["value"]["share"]
    for test in result["tests"]:
        name = test["name"]
        if name.startswith("Value Drift for column "):
            columns[name[len("Value Drift for column "):]]["drifted"] = str(test["status"]).endswith("FAIL")
        elif name.startswith("Share of Drifted Columns"):
            dataset = str(test["status"]).endswith("FAIL")
    results.append({"name": job["name"], "seconds": seconds, "columns": columns, "share": share, "dataset_drift": dataset})
json.dump({"version": evidently.__version__, "pandas": pd.__version__, "results": results}, open(sys.argv[2], "w"))
'''


def evidently_python() -> Path:
    """The Evidently venv's interpreter, creating the venv on first use."""
    python = EVIDENTLY_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {EVIDENTLY_VENV} with evidently 0.7 ...", flush=True)
        subprocess.run(["python3.11", "-m", "venv", str(EVIDENTLY_VENV)], check=True)
        (EVIDENTLY_VENV / ".gitignore").write_text("*\n")
        subprocess.run([str(python), "-m", "pip", "install", "-q", "evidently==0.7.*", "pandas<3", "pyarrow"], check=True)
    return python


def run_evidently(jobs: list[dict], work: Path) -> dict:
    spec, out, runner = work / "jobs.json", work / "evidently.json", work / "run_evidently.py"
    spec.write_text(json.dumps(jobs))
    runner.write_text(EVIDENTLY_RUNNER)
    subprocess.run([str(evidently_python()), str(runner), str(spec), str(out)], check=True)
    return json.loads(out.read_text())


# -- data ------------------------------------------------------------------------------------------------------

def with_nulls(values: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    values = values.astype(np.float64)
    values[rng.random(len(values)) < share] = np.nan
    return values


def zipf_levels(rng: np.random.Generator, rows: int, levels: int, tilt: float = 0.0) -> np.ndarray:
    weights = 1.0 / np.arange(1, levels + 1) ** (1.1 - tilt)
    return rng.choice([f"level_{i:03d}" for i in range(levels)], rows, p=weights / weights.sum())


def agreement_columns(rng: np.random.Generator, n_ref: int, n_cur: int) -> tuple[dict, dict, list[str], list[str]]:
    """Reference and current columns, one case each: (reference, current) generators of `rows` values."""
    normal, t, lognormal = rng.normal, rng.standard_t, rng.lognormal

    def mixture(rows: int, weight: float) -> np.ndarray:
        return np.where(rng.random(rows) < weight, normal(0, 1, rows), normal(4, 0.5, rows))

    def choice(values: list, p: list[float]):
        return lambda rows: rng.choice(values, rows, p=p)

    numeric = {
        "gauss_same": (lambda k: normal(0, 1, k), lambda k: normal(0, 1, k)),
        "gauss_shift_0.05": (lambda k: normal(0, 1, k), lambda k: normal(0.05, 1, k)),
        "gauss_shift_0.10": (lambda k: normal(0, 1, k), lambda k: normal(0.10, 1, k)),
        "gauss_shift_0.30": (lambda k: normal(0, 1, k), lambda k: normal(0.30, 1, k)),
        "gauss_scale_1.3": (lambda k: normal(0, 1, k), lambda k: normal(0, 1.3, k)),
        "t3_same": (lambda k: t(3, k), lambda k: t(3, k)),
        "t3_scale_1.25": (lambda k: t(3, k), lambda k: 1.25 * t(3, k)),
        "lognormal_same": (lambda k: lognormal(0, 1, k), lambda k: lognormal(0, 1, k)),
        "lognormal_shift": (lambda k: lognormal(0, 1, k), lambda k: lognormal(0.15, 1, k)),
        "mixture_same": (lambda k: mixture(k, 0.7), lambda k: mixture(k, 0.7)),
        "mixture_weights": (lambda k: mixture(k, 0.7), lambda k: mixture(k, 0.6)),
        "nulls_same": (lambda k: with_nulls(normal(0, 1, k), 0.1, rng), lambda k: with_nulls(normal(0, 1, k), 0.1, rng)),
        "nulls_more_shifted": (lambda k: with_nulls(normal(0, 1, k), 0.1, rng), lambda k: with_nulls(normal(0.3, 1, k), 0.4, rng)),
        "few_values_same": (choice([0.0, 1.0, 2.0, 3.0], [0.4, 0.3, 0.2, 0.1]), choice([0.0, 1.0, 2.0, 3.0], [0.4, 0.3, 0.2, 0.1])),
        "few_values_shift": (choice([0.0, 1.0, 2.0, 3.0], [0.4, 0.3, 0.2, 0.1]), choice([0.0, 1.0, 2.0, 3.0], [0.25, 0.25, 0.25, 0.25])),
        "binary_numeric": (choice([0.0, 1.0], [0.7, 0.3]), choice([0.0, 1.0], [0.64, 0.36])),
        "score": (lambda k: rng.beta(2, 5, k), lambda k: rng.beta(2.3, 5, k)),
        "int_wide": (lambda k: rng.integers(0, 1000, k), lambda k: rng.integers(0, 1000, k)),
    }
    categorical = {
        "cat_same": (choice(list("abcde"), [0.3, 0.25, 0.2, 0.15, 0.1]), choice(list("abcde"), [0.3, 0.25, 0.2, 0.15, 0.1])),
        "cat_shift": (choice(list("abcde"), [0.3, 0.25, 0.2, 0.15, 0.1]), choice(list("abcde"), [0.2, 0.2, 0.2, 0.2, 0.2])),
        "cat_binary": (choice(["no", "yes"], [0.7, 0.3]), choice(["no", "yes"], [0.65, 0.35])),
        "cat_many_same": (lambda k: zipf_levels(rng, k, 300), lambda k: zipf_levels(rng, k, 300)),
        "cat_many_tilted": (lambda k: zipf_levels(rng, k, 300), lambda k: zipf_levels(rng, k, 300, tilt=0.3)),
        "cat_unseen": (choice(list("abcd"), [0.4, 0.3, 0.2, 0.1]), choice(list("abcdxyz"), [0.36, 0.27, 0.18, 0.09, 0.04, 0.03, 0.03])),
    }
    reference = {name: make(n_ref) for name, (make, _) in {**numeric, **categorical}.items()}
    current = {name: make(n_cur) for name, (_, make) in {**numeric, **categorical}.items()}
    return reference, current, list(numeric), list(categorical)


@dataclass
class Case:
    name: str
    reference: Path
    current: Path
    numerical: list[str]
    categorical: list[str]
    config: DriftConfig
    preset: dict
    group: str
    exact_path: bool = False  # Loopwise also gets the full reference (check_drift(reference=...))
    evidently_case: str = ""  # the case whose Evidently run this one compares with (the same data and tests)

    def __post_init__(self) -> None:
        self.evidently_case = self.evidently_case or self.name


def write_case(work: Path, name: str, reference: dict, current: dict) -> tuple[Path, Path]:
    paths = work / f"{name}-reference.parquet", work / f"{name}-current.parquet"
    for data, path in zip((reference, current), paths, strict=True):
        pq.write_table(pa.Table.from_pandas(pd.DataFrame(data), preserve_index=False), path)
    return paths


def agreement_cases(work: Path, seeds: int) -> list[Case]:
    sizes = [(20_000, 5_000), (5_000, 5_000), (1_001, 500), (1_000, 3_000), (800, 800), (300, 2_000)]
    overrides = [  # (label, Loopwise config, Evidently preset arguments)
        ("numeric PSI", DriftConfig(numeric=ColumnTest("psi")), {"num_method": "psi"}),
        ("numeric KS", DriftConfig(numeric=ColumnTest("ks")), {"num_method": "ks"}),
        ("categorical PSI, numeric threshold 0.05",
         DriftConfig(categorical=ColumnTest("psi"), numeric=ColumnTest(threshold=0.05)),
         {"cat_method": "psi", "num_threshold": 0.05}),
    ]
    cases = []
    for seed in range(seeds):
        for n_ref, n_cur in sizes:
            rng = np.random.default_rng(seed)
            reference, current, numerical, categorical = agreement_columns(rng, n_ref, n_cur)
            name = f"seed{seed}-ref{n_ref}-cur{n_cur}"
            ref_path, cur_path = write_case(work, name, reference, current)
            cases.append(Case(name, ref_path, cur_path, numerical, categorical, DriftConfig(), {},
                              f"defaults, reference {n_ref:,} rows, current {n_cur:,}"))
            if seed == 0 and (n_ref, n_cur) in ((20_000, 5_000), (800, 800)):
                for label, config, preset in overrides:
                    cases.append(Case(f"{name}-{label}", ref_path, cur_path, numerical, categorical, config, preset,
                                      f"{label}, reference {n_ref:,} rows"))
                    if n_ref > 1000:
                        cases.append(Case(f"{name}-{label}-exact", ref_path, cur_path, numerical, categorical, config,
                                          preset, f"{label}, reference {n_ref:,} rows, with reference= (exact path)",
                                          exact_path=True, evidently_case=f"{name}-{label}"))
    return cases


def speed_case(work: Path, rows: int, columns: int = 20, seed: int = 7) -> Case:
    rng = np.random.default_rng(seed)
    names = [f"x{i:02d}" for i in range(columns)]
    reference = {name: rng.normal(0, 1, rows) for name in names}
    current = {name: rng.normal(0.2 if i % 4 == 0 else 0.0, 1, rows) for i, name in enumerate(names)}
    ref_path, cur_path = write_case(work, f"speed-{rows}", reference, current)
    return Case(f"speed-{rows}", ref_path, cur_path, names, [], DriftConfig(), {}, f"speed {rows:,}")


# -- Loopwise side ---------------------------------------------------------------------------------------------

def run_loopwise(case: Case) -> dict:
    reference, current = pq.read_table(case.reference), pq.read_table(case.current)
    kinds = {**{c: "numeric" for c in case.numerical}, **{c: "categorical" for c in case.categorical}}
    config = case.config
    start = time.perf_counter()
    profile = profile_reference(reference, kinds, config=config)
    profiled = time.perf_counter() - start
    stored = json.dumps(profile.to_dict())
    profile = ReferenceProfile.from_dict(json.loads(stored))
    start = time.perf_counter()
    report = check_drift(profile, current, config, reference=reference if case.exact_path else None)
    checked = time.perf_counter() - start
    return {"report": report, "profile_seconds": profiled, "check_seconds": checked, "profile_bytes": len(stored)}


def compare(case: Case, evidently: dict, loopwise: dict) -> dict:
    report = loopwise["report"]
    rows = []
    for column in report.columns:
        theirs = evidently["columns"][column.name]
        rows.append({"column": column.name, "test_same": EVIDENTLY_TEST_NAMES.get(theirs["method"], theirs["method"]) == column.test,
                     "verdict_same": theirs["drifted"] == column.drifted, "exact": column.exact,
                     "difference": abs(theirs["score"] - (column.p_value if column.p_value is not None else column.statistic)),
                     "evidently": (theirs["method"], theirs["score"], theirs["drifted"]),
                     "loopwise": (column.test, column.p_value if column.p_value is not None else column.statistic,
                                  column.drifted)})
    value_share = sum(c.drifted for c in report.columns) / len(report.columns)
    return {"columns": rows, "dataset_same": (value_share >= case.config.drift_share) == evidently["dataset_drift"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000], help="speed: rows per side")
    parser.add_argument("--seeds", type=int, default=3, help="agreement: seeds per reference size (defaults)")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--no-results", action="store_true", help="print only, do not append to RESULTS.md")
    args = parser.parse_args()
    load = load_average()
    started = datetime.now()

    with tempfile.TemporaryDirectory(prefix="drift-bench-") as tmp:
        work = Path(tmp)
        cases = agreement_cases(work, args.seeds)
        speed = [] if args.skip_speed else [speed_case(work, rows) for rows in args.rows]
        jobs = [{"name": c.name, "reference": str(c.reference), "current": str(c.current), "numerical": c.numerical,
                 "categorical": c.categorical, "preset": c.preset} for c in cases + speed if not c.exact_path]
        print(f"Evidently on {len(jobs) - len(speed)} agreement cases and {len(speed)} speed cases ...", flush=True)
        evidently = run_evidently(jobs, work)
        theirs = {r["name"]: r for r in evidently["results"]}
        print(f"evidently {evidently['version']} done; Loopwise ...", flush=True)

        groups: dict[str, dict] = {}
        mismatches = []
        for case in cases:
            result = compare(case, theirs[case.evidently_case], run_loopwise(case))
            g = groups.setdefault(case.group, {"cases": 0, "columns": 0, "tests": 0, "verdicts": 0, "datasets": 0, "exact": 0,
                                               "difference": 0.0})
            g["cases"] += 1
            g["columns"] += len(result["columns"])
            g["tests"] += sum(r["test_same"] for r in result["columns"])
            g["verdicts"] += sum(r["verdict_same"] for r in result["columns"])
            g["exact"] += sum(r["exact"] for r in result["columns"])
            g["datasets"] += result["dataset_same"]
            g["difference"] = max(g["difference"], *(r["difference"] for r in result["columns"]))
            mismatches += [(case.name, r) for r in result["columns"] if not (r["test_same"] and r["verdict_same"])]

        timings = []
        for case in speed:
            mine = run_loopwise(case)
            same = compare(case, theirs[case.name], mine)
            rows = int(case.name.split("-")[1])
            timings.append((rows, theirs[case.name]["seconds"], mine["check_seconds"], mine["profile_seconds"],
                            mine["profile_bytes"], all(r["verdict_same"] for r in same["columns"]) and same["dataset_same"]))

    lines = [f"\n## drift.py — {started:%Y-%m-%d %H:%M} — commit {commit()}",
             f"Machine: {machine()}. Load average when it started: {load}. "
             f"Evidently {evidently['version']} (own venv, pandas {evidently['pandas']}), `DataDriftPreset` with "
             f"`include_tests=True`; Loopwise checks the current data against a profile read back from JSON.",
             "",
             "Agreement: identical test chosen and identical verdict per column, and identical dataset verdict "
             f"(share of drifted columns >= 0.5); defaults over {args.seeds} seeds, overrides on the first. "
             f"{len(cases[0].numerical)} numeric and {len(cases[0].categorical)} categorical columns per case "
             "(Gaussian same/shifted 0.05, 0.10, 0.30 sd/scaled 1.3, Student t(3), lognormal, mixtures, "
             "nulls 10% -> 40%, few-valued, binary, score, wide integers; categoricals of 5, 2 and 300 levels, "
             "unseen levels). Certified: columns whose verdict Loopwise proves equal to one on the full reference. "
             "Score: Evidently's drift score (the p-value or the distance) against Loopwise's.",
             "",
             "| tests | cases | columns | same test | same verdict | same dataset verdict | certified | largest score difference |",
             "|---|---|---|---|---|---|---|---|"]
    for group, g in groups.items():
        lines.append(f"| {group} | {g['cases']} | {g['columns']} | {g['tests']}/{g['columns']} | "
                     f"{g['verdicts']}/{g['columns']} | {g['datasets']}/{g['cases']} | {g['exact']}/{g['columns']} | "
                     f"{g['difference']:.1e} |")
    if mismatches:
        lines += ["", "Mismatches (case, column, Evidently (method, score, drifted), Loopwise (test, score, drifted)):", ""]
        lines += [f"- {name}: {r['column']}: {r['evidently']} vs {r['loopwise']}" for name, r in mismatches]
    else:
        lines += ["", "No mismatch."]
    if timings:
        lines += ["", "Speed: 20 numeric columns (5 shifted by 0.2 sd), reference and current of the same size; "
                  "Evidently's report run against Loopwise's check of the current data (profiling once apart).", "",
                  "| rows per side | Evidently DataDriftPreset | Loopwise check | ratio | Loopwise profile (once) "
                  "| profile JSON | same verdicts |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {rows:,} | {ev:.1f} s | {lw:.2f} s | {ev / lw:.0f}x | {prof:.2f} s | {size / 1024:.0f} KiB | {same} |"
                  for rows, ev, lw, prof, size, same in timings]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_results:
        with RESULTS.open("a") as f:
            f.write(text)


if __name__ == "__main__":
    sys.exit(main())
