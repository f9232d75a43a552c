"""``docs/benchmarks.md`` from a results file, and its PNG beside it.

Everything in the document is generated from the results except the text between the
``analysis`` markers, which a person writes and which a new render keeps.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import Any

from relayq_load.bench.plot import plot

START, END = "<!-- analysis:start -->", "<!-- analysis:end -->"
PLACEHOLDER = "_Not written yet: read the figures above and say what limits the number._"
TARGET_JOBS_PER_MIN = 12_000
TARGET_RATIO = 0.7


def _family(role: str) -> str:
    if re.fullmatch(r"worker\d+", role):
        return "worker consumers (Celery main processes)"
    if re.fullmatch(r"worker\d+-pool", role):
        return "worker pool processes (run the jobs)"
    names = {
        "ingest": "ingest-svc (gRPC + Postgres + publish)",
        "postgres": "PostgreSQL (all backends)",
        "redis": "Redis",
        "bench": "bench client (gRPC submits, sampling)",
        "load tool": "relayq-load (Locust, gevent)",
        "baseline workers": "bare Celery workers (consumers + pool)",
        "other": "not the bench's (other load on the machine)",
    }
    return names.get(role, role)


def families(values: dict[str, float]) -> dict[str, float]:
    """Per-role values summed into process families, largest first."""
    out: dict[str, float] = {}
    for role, value in values.items():
        out[_family(role)] = out.get(_family(role), 0.0) + value
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def _med(runs: list[dict[str, Any]], key: str) -> float:
    values = [float(r[key]) for r in runs if r.get(key) is not None]
    return float(statistics.median(values)) if values else 0.0


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(runs, key=lambda r: r["jobs_per_min"])
    return ordered[len(ordered) // 2] if ordered else {}


def _kept_analysis(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return PLACEHOLDER
    if START in text and END in text:
        return text.split(START, 1)[1].split(END, 1)[0].strip() or PLACEHOLDER
    return PLACEHOLDER


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


CLIENT_ROLES = ("other", "bench", "load tool")


def server_cpu_ms(run: dict[str, Any]) -> float:
    """CPU milliseconds per job spent by the system under test (not clients, not other load)."""
    costs: dict[str, float] = run.get("cpu_ms_per_job", {})
    return sum(v for k, v in costs.items() if k not in CLIENT_ROLES)


def capacity_per_min(cpu_ms: float, cores: int = 2) -> float:
    """Jobs/min the CPU cost alone allows on ``cores`` otherwise idle cores."""
    return cores * 60_000 / cpu_ms if cpu_ms > 0 else 0.0


def _capacity_rows(results: dict[str, Any], layout: dict[str, Any]) -> list[list[str]]:
    cores = int(results["machine"].get("cores") or 2)
    rows = []
    kinds = [
        ("relayq single", layout["runs"]["single"]),
        ("relayq batched", layout["runs"]["batched"]),
        ("bare Celery", [b for b in layout["baseline"] if "cpu_ms_per_job" in b]),
    ]
    cells = []
    for name, runs in kinds:
        costs = [server_cpu_ms(r) for r in runs]
        if costs:
            cost = float(statistics.median(costs))
            cells.append(f"{name} {cost:.2f} ms → {_fmt(capacity_per_min(cost, cores))}/min")
    if cells:
        rows.append(
            [
                f"CPU per job of the stack's processes, and the rate it allows on {cores} idle "
                "cores (less sensitive to other load than the rates)",
                "; ".join(cells),
                "",
            ]
        )
    return rows


def _headline(results: dict[str, Any], layout: dict[str, Any]) -> list[str]:
    single = layout["single_median_jobs_per_min"]
    batched = layout["batched_median_jobs_per_min"]
    base = layout["baseline_median_jobs_per_min"]
    runs = layout["runs"]

    def each(values: list[float]) -> str:
        return ", ".join(_fmt(v) for v in values)

    rows = [
        [
            "relayq end to end, single `SubmitJob`",
            f"**{_fmt(single)}** jobs/min ({each([r['jobs_per_min'] for r in runs['single']])})",
            f"≥ {TARGET_JOBS_PER_MIN:,}: "
            + ("met" if single >= TARGET_JOBS_PER_MIN else "not met"),
        ],
        [
            f"relayq end to end, `SubmitJobs` of {results['settings']['batch_size']}",
            f"**{_fmt(batched)}** jobs/min ({each([r['jobs_per_min'] for r in runs['batched']])})",
            f"≥ {TARGET_JOBS_PER_MIN:,}: "
            + ("met" if batched >= TARGET_JOBS_PER_MIN else "not met"),
        ],
        [
            f"bare Celery, no-op task, {layout['layout']} prefork",
            f"**{_fmt(base)}** jobs/min ({each([b['jobs_per_min'] for b in layout['baseline']])})",
            "the ceiling",
        ],
        [
            "ratio relayq batched / bare Celery",
            f"**{batched / base:.2f}**" if base else "n/a",
            f"≥ {TARGET_RATIO}: "
            + ("met" if base and batched / base >= TARGET_RATIO else "not met"),
        ],
        [
            "ratio relayq single / bare Celery",
            f"{single / base:.2f}" if base else "n/a",
            "",
        ],
        *_capacity_rows(results, layout),
    ]
    sustain = layout.get("sustain")
    if sustain:
        rows.append(
            [
                f"submit latency at {sustain['jobs_per_min_target']:,} jobs/min "
                f"({sustain['rps_target']}/s single `SubmitJob`, {sustain['seconds']:.0f} s)",
                f"p50 **{sustain['p50_ms']:.1f} ms**, p99 **{sustain['p99_ms']:.1f} ms** "
                f"({_fmt(sustain['achieved_rps'] * 60)} calls/min achieved, "
                f"{sum(sustain['errors'].values())} errors)",
                "p99 ≤ 50 ms: " + ("met" if sustain["p99_ms"] <= 50 else "not met"),
            ]
        )
        rows.append(
            [
                "backlog during that load (second half)",
                f"slope {sustain['backlog_slope_per_s']:+.2f} jobs/s, "
                f"{sustain['backlog_end']:.0f} waiting at the end, "
                f"max {sustain['backlog_max']:.0f}",
                "no growth: " + ("met" if sustain["no_backlog_growth"] else "not met"),
            ]
        )
    before, after = layout.get("rss_before"), layout.get("rss_after")
    if before and after:
        total_before = before["consumers"] + before["pools"]
        total_after = after["consumers"] + after["pools"]
        growth = (total_after - total_before) / max(total_before, 1) * 100
        rows.append(
            [
                "worker RSS (consumers + pool processes)",
                f"{_mib(total_before)} → {_mib(total_after)} ({growth:+.1f} %) over "
                f"{_fmt(layout['jobs_between_rss'])} jobs; pools {_mib(before['pools'])} → "
                f"{_mib(after['pools'])}",
                "< 10 % over 100,000 jobs: " + ("met" if growth < 10 else "not met"),
            ]
        )
    return _table(["figure", f"median of {results['settings']['runs']} (each run)", "target"], rows)


def _cpu_table(layout: dict[str, Any]) -> list[str]:
    single = _median_run(layout["runs"]["single"])
    batched = _median_run(layout["runs"]["batched"])
    sustain = layout.get("sustain") or {}
    base = _median_run(layout["baseline"])
    columns = [
        ("single", single),
        ("batched", batched),
        ("steady 12k/min", sustain),
        ("bare Celery", base if "cores" in base else {}),
    ]
    columns = [(n, r) for n, r in columns if r]
    fams: dict[str, dict[str, tuple[float, float]]] = {}
    for name, run in columns:
        cores = families(run["cores"])
        per_job = families(run["cpu_ms_per_job"])
        for fam, value in cores.items():
            fams.setdefault(fam, {})[name] = (value, per_job.get(fam, 0.0))
    order = sorted(fams, key=lambda f: -max(v[0] for v in fams[f].values()))
    header = ["process"] + [f"{n}: cores (ms CPU/job)" for n, _ in columns]
    rows = []
    for fam in order:
        cells = [fam]
        for name, _ in columns:
            pair = fams[fam].get(name)
            cells.append(f"{pair[0]:.2f} ({pair[1]:.2f})" if pair else "")
        rows.append(cells)
    rows.append(
        ["**machine, all processes**"]
        + [f"**{run['machine_cores']:.2f}** of 2" for _, run in columns]
    )
    return _table(header, rows)


def _costs(layout: dict[str, Any]) -> list[str]:
    single = _median_run(layout["runs"]["single"])
    batched = _median_run(layout["runs"]["batched"])

    def trips(run: dict[str, Any]) -> str:
        value = run.get("pg_round_trips_per_job", run["pg_statements_per_job"])
        return f"**{value:.2f}**"

    lines = [
        f"- PostgreSQL round trips per job: {trips(single)} single, {trips(batched)} batched "
        f"({single['pg_statements_per_job']:.2f} / {batched['pg_statements_per_job']:.2f} "
        "statements: asyncpg's pool reset sends four in one round trip, "
        f"{single.get('pg_pool_resets_per_job', 0):.2f} / "
        f"{batched.get('pg_pool_resets_per_job', 0):.2f} resets per job); transactions per job "
        f"{single['pg_transactions_per_job']:.2f} / {batched['pg_transactions_per_job']:.2f}.",
        f"- Redis commands per job: **{single['redis_commands_per_job']:.2f}** single, "
        f"**{batched['redis_commands_per_job']:.2f}** batched.",
    ]
    base = layout["baseline"][0] if layout["baseline"] else {}
    msg = single.get("message_bytes") or batched.get("message_bytes")
    lines.append(
        f"- Bytes per job in Redis (one waiting message): relayq **{msg or 'n/a'}** B, "
        f"bare Celery {base.get('message_bytes') or 'n/a'} B (same keyword arguments)."
    )
    lines += ["", "Statements per job, every client (single / batched):", ""]
    single_sql = {s["query"]: s["per_job"] for s in single["pg_top_statements"]}
    batched_sql = {s["query"]: s["per_job"] for s in batched["pg_top_statements"]}
    queries = sorted(
        set(single_sql) | set(batched_sql),
        key=lambda q: -(single_sql.get(q, 0) + batched_sql.get(q, 0)),
    )
    lines += _table(
        ["statement", "single", "batched"],
        [
            [
                f"`{q.replace('|', '/')}`",
                f"{single_sql.get(q, 0):.2f}",
                f"{batched_sql.get(q, 0):.2f}",
            ]
            for q in queries
        ],
    )
    lines += ["", "Redis commands per job (single / batched):", ""]
    single_cmds = {c["command"]: c["per_job"] for c in single["redis_top_commands"]}
    batched_cmds = {c["command"]: c["per_job"] for c in batched["redis_top_commands"]}
    names = sorted(set(single_cmds) | set(batched_cmds), key=lambda n: -batched_cmds.get(n, 0))
    lines += _table(
        ["command", "single", "batched"],
        [[n, f"{single_cmds.get(n, 0):.2f}", f"{batched_cmds.get(n, 0):.2f}"] for n in names],
    )
    return lines


def _profile(layout: dict[str, Any]) -> list[str]:
    prof = layout.get("profile")
    if not prof:
        return ["_No profile in this run (`--profile 0`)._"]
    seconds = next((p.get("seconds") for p in prof["processes"].values() if "seconds" in p), 0)
    lines = [
        f"py-spy on three processes at once for {seconds} s during a batched run "
        f"({_fmt(prof['jobs_per_min'])} jobs/min), samples taken while the thread held the GIL "
        "(Python CPU, not waiting). *self*: the innermost function; *total*: anywhere on the "
        "stack; shares of the process's samples. *busy* ≈ share of a core in Python code.",
    ]
    for role, data in prof["processes"].items():
        lines += ["", f"**{role}**"]
        if "error" in data:
            lines += ["", f"py-spy failed: `{data['error'].strip()}`"]
            continue
        lines[-1] += f" (busy {data['busy']:.2f}, {data['samples']} samples)"
        lines += ["", "| self % | function | | total % | function |", "|---|---|---|---|---|"]
        for i in range(min(12, max(len(data["self"]), len(data["total"])))):
            s = data["self"][i] if i < len(data["self"]) else None
            t = data["total"][i] if i < len(data["total"]) else None
            lines.append(
                f"| {s['pct']:.1f} | `{s['name']}` | | {t['pct']:.1f} | `{t['name']}` |"
                if s and t
                else "| | | | | |"
            )
        lines += [
            "",
            "By package (self): "
            + ", ".join(f"{p['name']} {p['pct']:.0f} %" for p in data["packages"][:8]),
        ]
    return lines


def _runs(layout: dict[str, Any]) -> list[str]:
    rows = []
    for kind in ("single", "batched"):
        for i, run in enumerate(layout["runs"][kind], start=1):
            rows.append(
                [
                    f"{kind} {i}",
                    _fmt(run["jobs"]),
                    f"{run['seconds']:.1f}",
                    _fmt(run["jobs_per_min"]),
                    f"{run['submit_per_s']:,.0f}",
                    f"{run['rpc_p50_ms']:.0f} / {run['rpc_p99_ms']:.0f}",
                    f"{run['machine_cores']:.2f}",
                    f"{run['cores'].get('other', 0):.2f}",
                    str(sum(run["errors"].values())),
                ]
            )
    for i, base in enumerate(layout["baseline"], start=1):
        rows.append(
            [
                f"bare Celery {i}",
                _fmt(base["jobs"]),
                f"{base['seconds']:.1f}",
                _fmt(base["jobs_per_min"]),
                f"({base['publish_per_s']:,.0f} published/s before the clock)",
                "",
                "",
                "",
                "",
            ]
        )
    return _table(
        [
            "run",
            "jobs",
            "seconds",
            "jobs/min",
            "submits/s",
            "RPC p50 / p99 ms (under backlog)",
            "machine cores",
            "other load, cores",
            "errors",
        ],
        rows,
    )


def render(results: dict[str, Any], path: Path) -> None:
    """Writes the markdown and ``<name>.png`` next to it."""
    png = path.with_suffix(".png")
    plot(results, png)
    head = results["headline"]
    layout = results["layouts"][head]
    settings = results["settings"]
    machine = results["machine"]
    quick = " (a `--quick` smoke run: too short to quote)" if settings.get("quick") else ""
    lines = [
        "# Benchmarks",
        "",
        f"Measured by `make bench` on {results['date']}{quick}, in "
        f"{results.get('minutes', 0):.0f} minutes. Everything below the analysis is generated "
        "from the run's results (`.relayq/bench/results.json`) by `relayq_load.bench`; "
        "re-render with `python -m relayq_load.bench --render FILE`.",
        "",
        "## Headline",
        "",
        f"{head} worker layout (nodes x pool processes), jobs `demo.echo` submitted through "
        "gRPC, PostgreSQL durable (fsync on, `synchronous_commit` on), every guarantee on "
        "(idempotency keys, ledger records, metrics, JSON logs, tracing as configured).",
        "",
        *_headline(results, layout),
        "",
        f"![throughput and submit latency over time]({png.name})",
        "",
        "## What limits the number",
        "",
        START,
        _kept_analysis(path),
        END,
        "",
        "### CPU by process",
        "",
        "Average cores used while the median run of each kind ran (2 cores in all), and CPU "
        "milliseconds per job. `other` is CPU the bench did not cause (this machine is shared).",
        "",
        *_cpu_table(layout),
        "",
        "### Round trips and bytes per job",
        "",
        *_costs(layout),
        "",
        "### Hot spots",
        "",
        *_profile(layout),
        "",
        "## Every run",
        "",
        *_runs(layout),
        "",
    ]
    others = [name for name in results["layouts"] if name != head]
    if others:
        lines += ["## Other layouts", ""]
        rows = []
        for name in [head, *others]:
            other = results["layouts"][name]
            rows.append(
                [
                    name,
                    _fmt(other["single_median_jobs_per_min"]),
                    _fmt(other["batched_median_jobs_per_min"]),
                    _fmt(other["baseline_median_jobs_per_min"]),
                ]
            )
        lines += _table(["layout", "single", "batched", "bare Celery"], rows) + [""]
    lines += [
        "## How it is measured",
        "",
        f"- **Machine**: {machine['cpu'] or 'unknown CPU'}, {machine['cores']} cores, "
        f"{machine['memory_gib']} GiB; Python {machine['python']}, Celery {machine['celery']}, "
        f"grpcio {machine['grpcio']}, Linux {machine['kernel']}. Load average when the bench "
        f"started: {', '.join(f'{v:.1f}' for v in machine['load_average_at_start'])} — the "
        "machine is shared, so each run also reports the CPU used by processes that are not the "
        "bench's (`other load`).",
        "- **Stack**: `relayq-stack up --workers N --concurrency C` in `.relayq/bench/<layout>` "
        "(its own Redis and PostgreSQL, durable; PostgreSQL preloads `pg_stat_statements` to "
        "count statements), a 200-job warm-up first.",
        f"- **End to end**: {_fmt(settings['jobs'])} jobs per run, requests built before the "
        f"clock starts, sent by a grpc.aio client in the bench process "
        f"({settings['single_concurrency']} `SubmitJob` in flight, or "
        f"{settings['batch_concurrency']} `SubmitJobs` of {settings['batch_size']}); timed from "
        "the first submit to the largest `finished_at` of the run's jobs in the ledger.",
        f"- **Bare Celery**: `relayq_load.baseline`, {_fmt(settings['baseline_jobs'])} no-op "
        "tasks per run on Redis database 15 of the same server, the same Celery settings "
        "(`relayq_core.broker.celery_config`: `acks_late`, JSON, prefetch 1) and the same "
        "layout; consumers cancelled, all messages published in bulk, consumers added, timed "
        "until the queue and the unacked set are empty (then `inspect stats` confirms every "
        "task ran).",
        f"- **Steady load**: `relayq-load --rps {settings['rps']} -c 50 "
        f"-z {settings['sustain']:.0f}s` "
        "(single `SubmitJob`), after the saturating runs have settled (a `VACUUM` of the "
        "ledger, a `CHECKPOINT`, then until the stack's own processes use < 0.1 cores); "
        "latency is the client's, from the tool's ghz report; the backlog (ledger jobs waiting "
        "+ broker queue) is sampled every second and judged on the second half.",
        "- **Costs**: `pg_stat_statements` and `pg_stat_database` reset/read around each run, "
        "Redis `INFO commandstats` likewise; CPU from each process's `cpu_times` every second "
        "(psutil); worker RSS after the warm-up and at the end.",
        "- **Profiles**: `py-spy record --gil --nonblocking --threads --rate 100` on ingest, "
        "worker1's consumer and one of its pool processes.",
        "",
        "Reproduce: `make bench BENCH_ARGS='"
        f"--layouts {settings['layouts']} --runs {settings['runs']} --jobs {settings['jobs']} "
        f"--baseline-jobs {settings['baseline_jobs']} --sustain {settings['sustain']:.0f}'` "
        "(this run's settings; `make bench` alone uses the defaults of "
        "`.venv/bin/python -m relayq_load.bench --help`); `--quick` is a smoke test.",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
