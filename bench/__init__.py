"""The benchmark suite: `python -m bench` runs the benchmarks and writes docs/benchmarks.md.

Importing any module here changes nothing in the process (tests/unit/test_bench_imports.py):
the entry points call `bench.env.prepare_environment()` before anything that needs it.

Entry points (each `python -m bench.<name>`): `__main__` (the suite), `serve_child`,
`warmup_child` and `baseline_server` (processes the benchmarks start), `index_bench` (the
index on its own), `reliability_table` (docs/reliability.md's table).

The benchmarks, one `run(ctx, ...) -> Section` each: `serving` (1), `mixed` (2), `index` (3),
`embedding` (4), `coldstart` (5), `models` (6: real-sized models, with `real_models` (their
sizes and building), `model_workload` (what is run), `model_device` (the torch device),
`model_measure` (the measurements) and `model_report` (its section)).

Shared by them: `env` (repository root, process environment), `context` (`Context`,
`Section`), `stats` (`Sample`, medians), `load` (closed-loop load generators, HTTP session),
`servers` (server processes, a local Ray + Serve), `app_settings` (benchmark app settings,
Serve's fast path), `inputs` (tiny models, audio, images, catalog vectors), `machine` (ports,
machine info, git revision, CPU time), `tables` (number formatting, markdown tables) and
`report` (docs/benchmarks.md).
"""
