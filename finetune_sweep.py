#!/usr/bin/env python
"""Run fine-tuning sweeps on W&B or fully offline, with the same sweep YAML.

    python finetune_sweep.py create sweeps/strategy_grid.yaml --project dogs    # W&B: create the sweep
    python finetune_sweep.py agent ENTITY/PROJECT/ID --gpus 0,1                  # W&B: one agent per GPU
    python finetune_sweep.py local sweeps/demo.yaml --workers 2                   # no W&B server at all
    python finetune_sweep.py status runs/sweeps/demo                             # table of trials, best so far
    python finetune_sweep.py report runs/sweeps/demo                             # report.html: who won, can we trust it
    python finetune_sweep.py export runs/sweeps/demo --quantize --attributions 8 --out export/
    python finetune_sweep.py predict export/model.onnx photo.jpg folder/ --top 3
    python finetune_sweep.py soup runs/sweeps/demo --out runs/sweeps/demo/runs/soup   # greedy model soup
    python finetune_sweep.py dashboard runs/sweeps/demo --port 8080                # the study live in optuna-dashboard

Exit codes: 0 done, 1 failed (failures in a row, or no trial of the study completed), 2 bad sweep file or
arguments, 3 time budget spent with work left (run the same command again), 130 interrupted.
"""
import argparse
import sys
from pathlib import Path

from lib import sources
from lib.cli import Parser
from lib.errors import KitError, SweepError
from lib.records import ExitCode
from lib.sweep import budget, gpus, runner, status, wandb_sweep
from lib.sweep.options import Options


def _fixed(pairs):
    out = {}
    for pair in pairs or []:
        key, eq, value = pair.partition("=")
        if not eq:
            raise SweepError(f"--set {pair!r}: expected KEY=VALUE")
        out[key] = value
    return out


def cmd_create(a):
    wandb_sweep.create(a.sweep_file, a.project, a.entity)
    return ExitCode.OK


def _budget(a) -> tuple[float | None, float | None]:
    """--time_budget and --trial_estimate in seconds (one-line errors before anything starts)."""
    seconds = budget.parse_duration(a.time_budget) if a.time_budget else None
    estimate = budget.parse_duration(a.trial_estimate, "--trial_estimate") if a.trial_estimate else None
    return seconds, estimate


def cmd_agent(a):
    seconds, estimate = _budget(a)
    return wandb_sweep.agent(a.sweep_id, a.count, a.gpus, time_budget_s=seconds, trial_estimate_s=estimate)


def _check_counts(a):
    """Numbers that would start nothing, or stop at once: one line before anything is created."""
    for name, hint in (("workers", ""), ("count", " (leave it out to run the whole sweep)"), ("max_failures", "")):
        value = getattr(a, name)
        if value is not None and value < 1:
            raise SweepError(f"--{name}={value}: expected an integer >= 1{hint}")
    if a.seed is not None and not 0 <= a.seed < 2**32:
        raise SweepError(f"--seed={a.seed}: expected an integer in [0, 2**32 - 1]")


def cmd_local(a):
    _check_counts(a)
    seconds, estimate = _budget(a)
    devices = gpus.resolve_gpus(a.gpus)
    if devices and a.workers not in (None, len(devices)):
        raise SweepError(f"--workers {a.workers} with --gpus {a.gpus}: one worker per GPU ({len(devices)}); "
                         f"leave --workers out")
    sweep_dir = Path(a.sweep_dir or Path("runs") / "sweeps" / Path(a.sweep_file).stem)
    opts = Options(sweep_dir=sweep_dir, workers=len(devices) if devices else a.workers or 1, count=a.count,
                   storage=a.storage, seed=a.seed, max_failures=a.max_failures, extend=a.extend,
                   retry_failed=a.retry_failed, repeats=a.repeats, confirm_top=a.confirm_top, gpus=devices,
                   time_budget_s=seconds, trial_estimate_s=estimate, artifacts=a.artifacts)
    return runner.run_local(a.sweep_file, opts, _fixed(a.set))


def _source(a, where: str | None = None):
    """SOURCE as every command reads it (lib.sources), with a database's --study and --artifacts."""
    return sources.resolve(where or a.source, study=getattr(a, "study", None), artifacts=getattr(a, "artifacts", None))


def cmd_report(a):
    from lib import report

    source = _source(a)
    out = Path(a.out) if a.out else default_out(a.source, "report", a.study)
    result = report.build_report(source, out, metric=a.metric, goal=a.goal)   # metric None: the sweep's own
    print(result["verdict"])
    if result["recommended"]:
        print(f"recommended: run {result['recommended']['run_id']}: {result['recommended']['reason']}")
    print(f"report: {out / 'report.html'}\n        {out / 'report.md'}\n        {out / 'report.json'}"
          f"\n        {out / 'runs.csv'}")
    return ExitCode.OK


def cmd_export(a):
    from lib.ship.select import check_data_dir

    source = _source(a)
    source.open()   # a W&B sweep without a key, a database without the study: one line before torch loads
    check_data_dir(source, a.data_dir)   # before any run is asked of W&B or the database
    source.meta()
    from lib.ship import export

    out = Path(a.out) if a.out else default_out(a.source, "export", a.study)
    result = export.export_best(source, out, metric=a.metric, goal=a.goal, run_id=a.run,
                                max_size_mb=a.max_size_mb, max_latency_ms=a.max_latency_ms, quantize=a.quantize,
                                attributions=a.attributions, data_dir=a.data_dir)
    print(f"ships run {result['run_id']}: {result['reason']} [recommendation: {result['recommended_by']}]")
    if result.get("wandb_export_run"):
        print(f"logged to W&B as run {result['wandb_export_run']} (job_type=export)")
    print(f"exported run {result['run_id']} -> {out / 'model.onnx'}"
          f" (parity max |diff| {result['parity_max_abs_diff']:.2e},"
          f" top-1 agreement {result['parity_top1_agreement']:.3f})")
    for name in ("model.int8.onnx", "model_card.md", "export.json", "attributions"):
        if (out / name).exists():
            print(f"  {out / name}")
    return ExitCode.OK


def cmd_predict(a):
    from lib.ship import predict  # ONNX Runtime only: torch is never imported on this path

    predict.check_request(a.paths, a.top, a.csv)   # typos fail here, before the model is loaded
    results = predict.predict(a.model, a.paths, top_k=a.top)
    for line in predict.skipped(results):          # why each image was left out, where errors go
        print(line, file=sys.stderr)
    predict.check_classified(results)              # nothing classified: bad input, exit 2, nothing written
    print(predict.format_table([r for r in results if "error" not in r]))
    if a.csv:
        predict.write_csv(results, a.csv)          # every image, its error column included
    return ExitCode.OK if all("error" not in r for r in results) else ExitCode.FAILED   # partial: skipped on stderr


def cmd_soup(a):
    from lib.selection import selection
    from lib.train import soup

    source = _source(a)
    sel = selection(source.meta(), a.metric, a.goal, source.runs())
    record = soup.greedy_soup(source, Path(a.out), data_dir=a.data_dir, sel=sel)
    if record["id"] is None:
        print(f"no soup: adding any other run to {record['soup']['best_single']} lowered its {record['soup']['by']} "
              f"({len(record['soup']['steps']) - 1} tried); nothing written")
        return ExitCode.OK
    s = record["summary"]
    print(f"soup of {len(record['soup']['ingredients'])} run(s) ({', '.join(record['soup']['ingredients'])}): "
          f"val acc {s['best_val_acc']:.4f}, test acc {s['test_acc']:.4f} -> {a.out}")
    return ExitCode.OK


def cmd_status(a):
    source = _source(a, a.sweep_dir)   # a sweep dir, or the database's URL
    source.require(sources.STUDY_FORMS, "status")
    print(status.status_table(source.location, a.storage, a.study))
    return ExitCode.OK


def default_out(source: str, name: str, study: str | None = None) -> Path:
    """Where report and export write without --out: inside a local SOURCE (SOURCE/report, SOURCE/export);
    for a W&B sweep path or a database URL, ``<name>s/<the sweep or study>`` here (never a password: a
    URL gives only its database name, or --study)."""
    if Path(source).exists():
        return Path(source) / name
    if sources.form_of(source) == "database":
        from urllib.parse import urlsplit

        source = study or urlsplit(source).path.rstrip("/").rsplit("/", 1)[-1] or "study"
    return Path(f"{name}s") / "".join(c if c.isalnum() or c in "._-" else "-" for c in source).strip(".-")


def _database_source(url: str, study: str | None = None, artifacts: str | None = None, **_):
    from lib.sweep.study_db import DatabaseSource  # optuna's storage, only for a database URL

    return DatabaseSource(url, study, artifacts)


sources.register("database", _database_source)   # lib.sources is shared: the sweep layer's reader is added here
FOLDERS = ("sweep dir", "runs dir", "run folder")


def cmd_dashboard(a):
    from lib.sweep import dashboard  # optuna-dashboard is imported by this command only

    _source(a).require(sources.STUDY_FORMS, "dashboard")   # what SOURCE is, as status says it
    return dashboard.serve(a.source, host=a.host, port=a.port, study=a.study)


def _add_budget(p):
    p.add_argument("--time_budget", metavar="DURATION",
                   help="e.g. 11h30m, 45m, 90s: no trial starts that would not end in time; at the deadline "
                        "running trials get SIGTERM (they checkpoint, are marked preempted) and the exit code is 3")
    p.add_argument("--trial_estimate", metavar="DURATION",
                   help="how long one trial takes, until the study has finished trials to measure "
                        "(local: their median; agent: this value)")


_SPELLING = "\nOptions are written --flag_name; --flag-name is the same option.\n"


def _add_selection(p):
    p.add_argument("--metric", help="what ranks the runs (default: the sweep's own metric, else best_val_acc)")
    p.add_argument("--goal", choices=("maximize", "minimize"),
                   help="the metric's direction (default: the sweep's for its metric; else minimize for a *loss*)")


def parser():
    p = Parser(description=__doc__ + _SPELLING, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("create", help="create the sweep on W&B and print the agent command")
    c.add_argument("sweep_file")
    c.add_argument("--project")
    c.add_argument("--entity")
    c.set_defaults(fn=cmd_create)
    g = sub.add_parser("agent", help="run `wandb agent` once per GPU (CUDA_VISIBLE_DEVICES), staggered")
    g.add_argument("sweep_id", help="ENTITY/PROJECT/SWEEP_ID")
    g.add_argument("--count", type=int, help="runs per agent")
    g.add_argument("--gpus", help="all, or comma-separated GPU indices, e.g. 0,1,2,3: one agent per GPU")
    _add_budget(g)
    g.set_defaults(fn=cmd_agent)
    loc = sub.add_parser("local", help="run the sweep offline (Optuna); run again to continue it")
    loc.add_argument("sweep_file")
    loc.add_argument("--workers", type=int, help="trials at once on this machine (default 1; with --gpus one per GPU)")
    loc.add_argument("--gpus", help="all, or comma-separated GPU indices: one worker per GPU, its trials see only "
                                    "that GPU (CUDA_VISIBLE_DEVICES)")
    _add_budget(loc)
    loc.add_argument("--count", type=int, help="at most this many trials in this invocation")
    loc.add_argument("--storage", help="Optuna RDB URL shared by workers on several machines "
                                       "(default: a journal file in the sweep dir)")
    loc.add_argument("--sweep_dir", help="default: runs/sweeps/<sweep file name>")
    loc.add_argument("--seed", type=int, help="seed the search so a random/bayes study can be repeated")
    loc.add_argument("--max_failures", type=int, default=3, help="consecutive failed trials that stop the sweep")
    loc.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="fix a config key for every trial (e.g. data_dir, epochs), overriding the YAML")
    loc.add_argument("--extend", action="store_true",
                     help="adopt an edited sweep file in an existing sweep dir: a grid runs only its new points; "
                          "random/bayes draw new trials from the edited space")
    loc.add_argument("--repeats", type=int, default=1, metavar="K",
                     help="grid: run every point with K seeds (seed, seed+1, ...: a `seed` parameter, as on W&B); "
                          "with --confirm_top N, only the N best configurations")
    loc.add_argument("--confirm_top", type=int, default=0, metavar="N",
                     help="grid: once it is done, run its N best configurations (by the sweep metric) again with "
                          "seeds seed+1 .. seed+K-1 (--repeats K) in the same study; running again adds none twice")
    loc.add_argument("--artifacts", metavar="DIR|s3://BUCKET|gs://BUCKET",
                     help="the study's artifact store: every trial's run.json and metrics, and its best weights, "
                          "where `report URL` and `export URL` fetch them on any machine (default: the store the "
                          "study recorded, if any; else the files stay in this machine's sweep dir)")
    loc.add_argument("--retry_failed", action="store_true",
                     help="run the failed trials again (once each), under their run ids")
    loc.set_defaults(fn=cmd_local)
    r = sub.add_parser("report", help="which strategy won, by how much, and can we trust it")
    r.add_argument("source", help="a local sweep dir, a runs dir, a W&B sweep path ENTITY/PROJECT/SWEEP_ID, or the "
                                  "database URL of a study shared by machines")
    r.add_argument("--out", help="default: SOURCE/report (a W&B path or database URL: reports/<sweep or study>)")
    _add_selection(r)
    r.add_argument("--study", help="with a database URL: the study (default: the database's only one)")
    r.add_argument("--artifacts", metavar="DIR|s3://BUCKET|gs://BUCKET",
                   help="with a database URL: the study's artifact store, where it is on this machine (the one the "
                        "study records is read only when named here, or confirmed at a terminal)")
    r.set_defaults(fn=cmd_report)
    e = sub.add_parser("export", help="ship the best run: ONNX (+ INT8), attributions, model card")
    e.add_argument("source", help="a local sweep dir, a runs dir, one run dir, a W&B sweep path "
                                  "ENTITY/PROJECT/SWEEP_ID (weights from the run's model artifact; the export is "
                                  "logged back), or a study's database URL (weights from its artifact store)")
    e.add_argument("--data_dir",
                   help="where the run's images are here (parity uses its test images); by default its config's "
                        "data_dir, except for a run from W&B or a database URL, whose record chooses no local files")
    e.add_argument("--out", help="default: SOURCE/export (a W&B path or database URL: exports/<sweep or study>)")
    e.add_argument("--run", metavar="RUN_ID", help="ship this run (default: the run the report recommends, among "
                                                   "those that meet --max_size_mb / --max_latency_ms)")
    _add_selection(e)
    e.add_argument("--max_size_mb", type=float)
    e.add_argument("--max_latency_ms", type=float)
    e.add_argument("--quantize", action="store_true",
                   help="also model.int8.onnx (static, calibrated on training images)")
    e.add_argument("--attributions", type=int, default=0, metavar="N", help="Captum IG + Grad-CAM for N test images")
    e.add_argument("--study", help="with a database URL: the study (default: the database's only one)")
    e.add_argument("--artifacts", metavar="DIR|s3://BUCKET|gs://BUCKET",
                   help="with a database URL: the study's artifact store, where it is on this machine (the one the "
                        "study records is read only when named here, or confirmed at a terminal)")
    e.set_defaults(fn=cmd_export)
    pr = sub.add_parser("predict", help="classify images with an exported model (ONNX Runtime only)")
    pr.add_argument("model", help="model.onnx (or the export dir)")
    pr.add_argument("paths", nargs="+", help="images and folders")
    pr.add_argument("--top", type=int, default=3)
    pr.add_argument("--csv")
    pr.set_defaults(fn=cmd_predict)
    sp = sub.add_parser("soup", help="greedy model soup of the finished runs that share a pretrained start")
    sp.add_argument("source", help="a local sweep dir or runs dir, or a study's database URL (the runs' files from "
                                   "its artifact store)")
    sp.add_argument("--out", required=True, help="the soup's run folder (inside SOURCE/runs so report/export see it)")
    sp.add_argument("--data_dir", help="where the runs' images are, if moved")
    _add_selection(sp)
    sp.add_argument("--study", help="with a database URL: the study (default: the database's only one)")
    sp.add_argument("--artifacts", metavar="DIR|s3://BUCKET|gs://BUCKET",
                    help="with a database URL: the study's artifact store, where it is on this machine")
    sp.set_defaults(fn=cmd_soup)
    s = sub.add_parser("status", help="table of a local sweep's trials and the best so far")
    s.add_argument("sweep_dir", help="a sweep dir, or the database URL of a study shared by machines")
    s.add_argument("--storage", help="the study's RDB URL, if not the one in sweep.json (which has no password)")
    s.add_argument("--study", help="with a database URL: the study (default: the database's only one)")
    s.set_defaults(fn=cmd_status)
    d = sub.add_parser("dashboard", help="the study live in optuna-dashboard (history, parallel coordinates, "
                                         "parameter importance, per-epoch metric), read-only")
    d.add_argument("source", help="a sweep dir, or the database URL of a study shared by machines")
    d.add_argument("--port", type=int, default=8080, help="default 8080; 0: any free port")
    d.add_argument("--host", default="127.0.0.1",
                   help="default 127.0.0.1 (reach it through an SSH tunnel); 0.0.0.0 opens it to the network, "
                        "and it has no login")
    d.add_argument("--study", help="the database's study to open (default: the sweep dir's, or the only one)")
    d.set_defaults(fn=cmd_dashboard)
    return p


def main(argv):
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except KitError as e:   # the user's to fix: one line; anything else is a bug and keeps its traceback
        print(f"error: {e}", file=sys.stderr)
        return ExitCode.BAD_INPUT


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
