"""The `ctb-mobile` command line: thin commands over library functions.

Each command checks its options, builds a request or calls a library function, and prints. What it
prints follows one rule: its results (tables, JSON lines, reports, paths) go to stdout through `_out`,
and its notes and the library's progress and log lines go to the terminal (toolchain.quiet.terminal(),
the stderr the log routing leaves to the user): notes through `_out(..., err=True)`, progress through
the stderr console `_console(stderr=True)`.

Errors the user can fix are printed as one line (`error: ...`) with exit code 2; set
CTB_DEBUG=1 to see the full traceback instead.
"""

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from toolchain import UserError, __version__
from toolchain.workspace import Workspace, report_of

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="ctb-mobile: many BERT tasks on a phone for the price of little more than one.")


@app.callback()
def _options(verbose: bool = typer.Option(False, "--verbose", help="show the libraries' own warnings and native "
                                          "log lines (by default they go to the log file: CTB_LOG, else "
                                          "~/.cache/ctb-mobile/ctb-mobile.log)")):
    """ctb-mobile: many BERT tasks on a phone for the price of little more than one."""
    # main() acts on --verbose before any library is imported (toolchain.quiet.route).


def _ints(value: str | None, name: str):
    if value is None:
        return None
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--{name} {value!r} is not a comma-separated list of integers; e.g. --{name} 1,2,3") from None
    if not out:
        raise UserError(f"--{name} is empty; e.g. --{name} 1,2,3")
    return out


def _seeds(value: str | None):
    from toolchain.config import check_seed

    return None if value is None else [check_seed(s, "--seeds") for s in _ints(value, "seeds")]


def _words(value: str) -> list:
    return [v.strip() for v in value.split(",") if v.strip()]


# Options shared by the training commands, declared once.
Tasks = Annotated[list[str] | None, typer.Option("--task", "-t", help="only this task (repeatable)")]
Out = Annotated[Path | None, typer.Option(help="the training output folder (default: next to the recipe)")]
Cache = Annotated[bool, typer.Option(help="reuse frozen-trunk features across epochs and runs")]
Force = Annotated[bool, typer.Option(help="redo runs that already finished")]
MaxTrain = Annotated[int | None, typer.Option(help="cap each task's train set (seeded random subset)")]
MaxDev = Annotated[int | None, typer.Option(help="cap each task's dev set (seeded random subset)")]
Epochs = Annotated[int | None, typer.Option(help="override the recipe's epochs")]


def _console(stderr: bool = False):
    """A rich console. Tables and paths on stdout never have a cell cut when it is a pipe or a file
    (the next command needs the paths); progress and log lines on stderr keep rich's defaults."""
    from rich.console import Console

    if stderr:
        from toolchain.quiet import terminal

        return Console(file=terminal())
    return Console(width=None if sys.stdout.isatty() else 100_000)


def _out(*results, err: bool = False) -> None:
    """Print results on stdout, or with `err` notes on the terminal: a str as it is, one line each;
    a rich renderable (a table) through `_console`."""
    from toolchain.quiet import terminal

    for r in results:
        if isinstance(r, str):
            typer.echo(r, file=terminal() if err else None)
        else:
            _console(stderr=err).print(r)


def _table(title: str, columns, rows):
    from rich.table import Table

    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    return table


@app.command()
def train(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE", help="recipe file, e.g. models/assistant.toml"),
    *,
    task: Tasks = None,
    layers: str = typer.Option(None, help="sweep: fine-tune the top L layers for each L, e.g. 1,2,3,4,5,6"),
    seeds: str = typer.Option(None, help="seeds per L, e.g. 0,1,2 (default: the recipe's seed)"),
    out: Out = None,
    cache: Cache = True,
    force: Force = False,
    max_train: MaxTrain = None,
    max_dev: MaxDev = None,
    epochs: Epochs = None,
):
    """Partially fine-tune each task's top L layers; with --layers, sweep L and select one per task."""
    from toolchain.config import load_recipe
    from toolchain.runs import is_main_process
    from toolchain.train import run_sweep

    recipe = load_recipe(recipe_path).override(max_train, max_dev, epochs)
    ws = Workspace.of_recipe(recipe, out)
    summary = run_sweep(recipe, ws, tasks=task, layers=_ints(layers, "layers"), seeds=_seeds(seeds),
                        use_cache=cache, force=force, console=_console(stderr=True))
    if not is_main_process():  # under torchrun, the other processes print nothing
        return
    depth = summary.get("depth")
    rows = [(name, str(s["layers"]), str(depth - s["layers"]) if depth else "-", s["metric"], f"{s['dev_metric']:.2f}",
             s["run"]) for name, s in summary["selected"].items()]
    _out(_table(f"{recipe.name}: selected L ({summary['rule']})", ("task", "L", "attach depth", "metric", "dev", "run"),
                rows), f"results: {ws.sweep}")


@app.command()
def distill(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE"),
    *,
    task: Tasks = None,
    layers: str = typer.Option(None, help="student sizes l (task layers), e.g. 1,2,3 (default: \\[distill] layers)"),
    teacher_layers: int = typer.Option(None, help="teacher L (default: the sweep's selected L per task)"),
    seeds: str = typer.Option(None, help="seeds, e.g. 0,1"),
    attach: str = typer.Option(None, help="students' attach depths, e.g. 2,3,4; each task uses those at most its "
                               "teacher's (default: \\[distill] attach, else the teacher's)"),
    out: Out = None,
    cache: Cache = True,
    force: Force = False,
    max_train: MaxTrain = None,
    max_dev: MaxDev = None,
    epochs: Epochs = None,
):
    """Distil each task's teacher (L fine-tuned layers) into l-layer branches (KD on the outputs; on
    hidden states and attention too with \\[distill] hidden_weight, attention_weight)."""
    from toolchain.config import load_recipe
    from toolchain.distill import run_distill
    from toolchain.runs import is_main_process

    recipe = load_recipe(recipe_path).override(max_train, max_dev, epochs)
    summary = run_distill(recipe, Workspace.of_recipe(recipe, out), tasks=task, layers=_ints(layers, "layers"),
                          teacher_layers=teacher_layers, seeds=_seeds(seeds), attach=_ints(attach, "attach"),
                          use_cache=cache, force=force, console=_console(stderr=True))
    if not is_main_process():
        return
    for name, e in summary.items():
        students = ", ".join(f"({k}) {v['dev_metric']:.2f}" for k, v in sorted(e["students"].items()))
        _out(f"{name}: teacher ({e['teacher']['attach']},{e['teacher']['layers']}) "
             f"{e['teacher']['dev_metric']:.2f} {e['metric']}; students {students}")


@app.command()
def plan(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE"),
    out: Out = None,
    criterion: str = typer.Option(None, help="mixed (marginal gain per layer), best, or cost (best metric "
                                  "within --max-cost); default: \\[plan] criterion, mixed"),
    threshold: float = typer.Option(None, help="mixed: minimum gain in points per added layer (recipe \\[plan])"),
    budget: int = typer.Option(None, help="cap on the total branch layers (0: none; recipe \\[plan])"),
    max_cost: float = typer.Option(None, help="cost: largest overhead, a fraction of separate full models, "
                                   "e.g. 0.3 (recipe \\[plan])"),
):
    """Propose (attach depth, branch layers) per task from the sweep and distillation results; report the
    teacher and the chosen branch on dev and on each task's test split, side by side."""
    from toolchain import backbone
    from toolchain.config import load_recipe
    from toolchain.plan import plan_markdown, plan_recipe, write_plan

    recipe = load_recipe(recipe_path)
    ws = Workspace.of_recipe(recipe, out)
    cfg = recipe.plan.override(criterion, threshold, budget, max_cost)
    p = plan_recipe(recipe, ws, cfg, backbone.load(recipe.backbone_spec).depth, heldout=True)
    write_plan(ws, p)
    _out(plan_markdown(p) + f"written: {ws.plan}")


@app.command()
def report(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE"),
    out: Out = None,
):
    """Table-2-style comparison: full fine-tune, teacher, KD-1/2/3 and the plan, with overhead."""
    from toolchain import backbone
    from toolchain.config import load_recipe
    from toolchain.plan import table2, table2_markdown, write_table2

    recipe = load_recipe(recipe_path)
    ws = Workspace.of_recipe(recipe, out)
    t2 = table2(ws, backbone.load(recipe.backbone_spec).depth, [t.name for t in recipe.tasks])
    write_table2(ws, t2)
    _out(table2_markdown(t2) + f"written: {ws.table2_table}")


@app.command()
def merge(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE"),
    out: Out = None,
    store: Path = typer.Option(None, help="store folder to create (default: <out>/store)"),
    source: str = typer.Option("plan", "--from", help="plan (plan.json) or selected (the sweep's teachers)"),
    force: bool = typer.Option(False, help="rebuild an existing store"),
):
    """Build the merged model store: the frozen trunk once, plus the chosen branch of every task."""
    from toolchain import backbone
    from toolchain.config import load_recipe
    from toolchain.store import create

    recipe = load_recipe(recipe_path)
    ws = Workspace.of_recipe(recipe, out)
    runs = ws.chosen_runs(source)
    bb = backbone.load(recipe.backbone_spec)
    store_dir = store or ws.store
    create(store_dir, bb, recipe.backbone, runs, force=force)
    _out(f"store {store_dir}: {len(runs)} branches on a {bb.depth}-layer trunk")
    _out(*_branch_lines(store_dir))


@app.command()
def build(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE", help="recipe file, e.g. models/assistant.toml"),
    target: str = typer.Option("android", help="android (ExecuTorch), ios (CoreML), onnx, or all"),
    out: Out = None,
    quick: bool = typer.Option(False, help="a first run in minutes: 2,000 rows per task, one epoch, no "
                               "distillation, into <recipe name>-quick/"),
):
    """Every stage from recipe to verified bundle: train, distill and plan (when the recipe has \\[distill] /
    \\[plan]), merge, export, verify. Each resumes from what already finished; the stages stay commands."""
    from toolchain.build import Build, check_targets, run
    from toolchain.config import load_recipe

    targets = check_targets(target)
    console = _console(stderr=True)
    b = Build.of(load_recipe(recipe_path), targets, out=out, quick=quick, log=console.log)
    result = run(b, console)
    cost = result["cost"]
    tasks = [(name, f"({t['branch'][0]}, {t['branch'][1]})", t["metric"], f"{t['dev']:.2f}", f"{t['teacher']:.2f}",
              f"{t['of_teacher']:.1%}" if t["of_teacher"] else "-") for name, t in result["tasks"].items()]
    bundles = [(t, bnd["path"], f"{bnd['bytes'] / 1e6:.1f}", bnd["verify"],
                f'ctb-mobile predict {bnd["path"]} "wake me up at 7 am tomorrow"')
               for t, bnd in result["bundles"].items()]
    _out(_table(f"{b.recipe.name}: {len(result['tasks'])} tasks, cost {cost['total_layers']} of "
                f"{cost['separate_full_models']} layers ({cost['fraction']:.0%} of separate models)",
                ("task", "(attach, layers)", "metric", "dev", "teacher", "of teacher"), tasks),
         _table(f"bundles (build took {result['seconds']:.0f} s)", ("target", "bundle", "MB", "verify", "try it"),
                bundles))
    if any(bnd["verify"] == "FAIL" for bnd in result["bundles"].values()):
        raise typer.Exit(1)


@app.command()
def predict(
    path: Path = typer.Argument(..., metavar="STORE_OR_BUNDLE", help="a merged model store or an exported bundle"),
    texts: list[str] = typer.Argument(..., help="one or more texts"),
    pair: list[str] = typer.Option(None, help="second text for pair tasks (once per text)"),
    task: list[str] = typer.Option(None, "--task", "-t", help="only these tasks"),
    max_len: int = typer.Option(None, help="store only: max tokens (default: the max_seq_len the branches were "
                                "trained at; a bundle truncates at its own)"),
):
    """Run every task on texts (one trunk pass) and print one JSON line per text. A store runs in PyTorch;
    a bundle runs its exported programs through runtime_py, as an app would."""
    import json

    if pair and len(pair) != len(texts):
        raise UserError(f"{len(pair)} --pair values for {len(texts)} texts; give one --pair per text or none")
    if (path / "manifest.json").is_file():
        from runtime_py import Predictor

        if max_len is not None:
            raise UserError(f"--max-len is for stores; bundle {path} truncates at the max_seq_len it was exported with")
        results = Predictor(path, tasks=task or None).predict(texts, pair or None, batch_size=1)
    else:
        from toolchain.infer import predict_store

        results = predict_store(path, texts, pair or None, task, max_len)
    for text, result in zip(texts, results):
        try:
            line = json.dumps({"text": text, **result}, ensure_ascii=False, allow_nan=False)  # NaN is not JSON
        except ValueError:
            raise UserError(f"the model gave a non-finite output (NaN or infinity) for {text[:40]!r}; its branch "
                            "weights are broken: retrain the branch (a lower learning rate)") from None
        _out(line)


@app.command()
def export(
    *,
    recipe_path: Path = typer.Argument(..., metavar="RECIPE", help="the recipe (dev sets for the guard, max_seq_len)"),
    target: str = typer.Option(..., help="android (ExecuTorch), ios (CoreML), onnx, or all"),
    precision: str = typer.Option(None, help="android: fp32|int8|int4; ios: fp16|int8|int4|fp32; onnx: fp32|int8|int8-static|int4"),
    layout: str = typer.Option("fused", help="fused (one program) or split (trunk + one program per branch)"),
    store: Path = typer.Option(None, help="merged store (default: <out>/store)"),
    out: Out = None,
    out_dir: Path = typer.Option(None, help="bundle folder (default: <out>/bundles/<target>-<layout>-<precision>)"),
    max_drop: float = typer.Option(None, help="guard: max dev-metric drop per task (recipe \\[export])"),
):
    """Quantize and export the merged model as a bundle for a device target."""
    from toolchain.config import load_recipe
    from toolchain.export import TARGETS, check_request, export_bundle

    recipe = load_recipe(recipe_path)
    targets = list(TARGETS) if target == "all" else [target]
    if precision and target == "all":
        raise UserError("--precision cannot be combined with --target all; export one target at a time")
    requests = [(t, *check_request(t, precision, layout)) for t in targets]  # all checks before any work
    ws = Workspace.of_recipe(recipe, out)
    console = _console(stderr=True)
    rows = []
    for t, _, p in requests:
        dest = ws.bundle(t, layout, p, out_dir, several=len(targets) > 1)
        with console.status(f"exporting {t} ({layout}, {p})"):
            manifest = export_bundle(recipe, store or ws.store, t, p, layout, dest, max_drop=max_drop, log=console.log)
        rows += [(str(dest), f, f"{info['bytes']:,}",
                  next((pr["precision"] for pr in manifest["programs"] if f in pr["files"]), "-"))
                 for f, info in manifest["files"].items()]
    _out(_table("bundles", ("bundle", "file", "bytes", "precision"), rows))


@app.command()
def verify(
    *,
    bundle: Path = typer.Argument(..., metavar="BUNDLE", help="an exported bundle folder"),
    recipe_path: Path = typer.Option(..., "--recipe", help="the recipe the model was trained from (dev sets)"),
    store: Path = typer.Option(None, help="merged store the bundle was exported from (default: <out>/store)"),
    out: Out = None,  # the training output folder: store and the single-task run folders
    report: Path = typer.Option(None, help="report folder (default: <bundle>.verify next to the bundle)"),
    limit: int = typer.Option(None, min=1, help="dev examples per task (default: the rows the export guard judges)"),
    golden: int = typer.Option(150, min=0, help="dev texts per task in golden.json (plus edge and span cases)"),
    junit_xml: Path = typer.Option(None, help="also write the checks as JUnit XML (one case per task and check) "
                                   "for a CI system's test report"),
):
    """Check a bundle against the PyTorch originals on real dev text; exit 1 if any check fails."""
    from toolchain.config import load_recipe
    from toolchain.verify import verify as run_verify

    if not bundle.is_dir():
        raise UserError(f"bundle {bundle} not found; give the folder `ctb-mobile export` wrote")
    recipe = load_recipe(recipe_path)
    report_dir = report or report_of(bundle)
    ws = Workspace.of_recipe(recipe, out)
    result = run_verify(bundle, recipe, store or ws.store, report_dir, runs_dir=ws.root, limit=limit, golden=golden,
                        log=_console(stderr=True).log)
    if junit_xml is not None:
        from toolchain.junit import write as write_junit

        write_junit(result, junit_xml)
    _out((report_dir / "verify.md").read_text(), f"report: {report_dir / 'verify.json'}, golden vectors: "
         f"{report_dir / 'golden.json'}" + (f", JUnit XML: {junit_xml}" if junit_xml else ""))
    if not result["ok"]:
        raise typer.Exit(1)


@app.command()
def embed(
    bundle: Path = typer.Argument(..., metavar="BUNDLE", help="an exported and verified bundle folder"),
    app_name: str = typer.Option(..., "--app", help="android_demo (ExecuTorch bundles) or ios_demo (CoreML bundles)"),
    app_dir: Path = typer.Option(None, help="the app's folder (default: the app in this repository)"),
    report: Path = typer.Option(None, help="verify report folder (default: <bundle>.verify next to the bundle)"),
):
    """Copy a verified bundle and its golden files into a demo app's assets."""
    from toolchain.embed import embed as run_embed

    done = run_embed(bundle, app_name, app_dir, report)
    _out(f"bundle: {done['bundle']} ({len(done['files'])} files)", f"golden: {done['golden']}")


@app.command()
def bench(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE", help="the recipe (dev text, max_seq_len)"),
    *,
    store: Path = typer.Option(None, help="merged store (default: <out>/store)"),
    out: Out = None,
    out_dir: Path = typer.Option(None, help="benchmark folder (default: <out>/bench)"),
    targets: str = typer.Option("onnx,android", help="comma-separated: onnx, android"),
    precisions: str = typer.Option("fp32,int8", help="comma-separated: fp32, int8, int4"),
    lengths: str = typer.Option("16,64,128", help="sequence lengths; those above max_seq_len are reported, not run"),
    repeats: int = typer.Option(20, help="timed calls per configuration and length"),
    peer: bool = typer.Option(True, help="include optimum-onnx single-task models quantized with its ORT quantizer"),
    guard_examples: int = typer.Option(200, help="dev examples per task for the dev-metric comparison"),
    threads: int = typer.Option(None, help="threads for every runtime timed: PyTorch, ONNX Runtime, ExecuTorch and "
                                "the GEMM peak (default: each runtime's own)"),
    singles_from: Path = typer.Option(None, help="store whose branches are the single-task models, e.g. the "
                                      "teachers for a distilled store (default: the merged store's own)"),
):
    """Merged model vs the same tasks as single-task models (and the optimum peer): latency, memory, bytes."""
    from toolchain.bench import BenchRequest, run_bench
    from toolchain.config import load_recipe

    recipe = load_recipe(recipe_path)
    ws = Workspace.of_recipe(recipe, out)
    req = BenchRequest(recipe, store or ws.store, out_dir or ws.bench, targets=tuple(_words(targets)),
                       precisions=tuple(_words(precisions)), lengths=tuple(_ints(lengths, "lengths")),
                       repeats=repeats, peer=peer, guard_examples=guard_examples, threads=threads,
                       singles_from=singles_from)
    run_bench(req, log=_console(stderr=True).log)
    _out((req.out_dir / "bench.md").read_text())


branch_app = typer.Typer(no_args_is_help=True, help="Change one branch of a store; the others stay byte-identical.")
app.add_typer(branch_app, name="branch")


def _branch_lines(store_dir) -> list:
    from toolchain.store import list_branches

    return [f"  {m.task:<16} {m.type:<14} ({m.attach},{m.layers})  {m.metric} "
            f"{f'{m.dev_metric:.2f}' if m.dev_metric is not None else '-'}  {len(m.labels) or '-'} labels"
            for m in list_branches(store_dir)]


@branch_app.command("add")
def branch_add(store: Path = typer.Argument(...), run: Path = typer.Argument(..., help="a run folder")):
    """Add a task's branch (a training or distillation run folder) to the store."""
    from toolchain.store import add

    m = add(store, run)
    _out(f"added {m.task} ({m.attach},{m.layers})")


@branch_app.command("update")
def branch_update(store: Path = typer.Argument(...), run: Path = typer.Argument(..., help="a run folder")):
    """Replace a task's branch with a newer run of the same task."""
    from toolchain.store import update

    m = update(store, run)
    _out(f"updated {m.task} ({m.attach},{m.layers})")


@branch_app.command("remove")
def branch_remove(store: Path = typer.Argument(...), task: str = typer.Argument(...)):
    """Remove a task's branch from the store."""
    from toolchain.store import remove

    remove(store, task)
    _out(f"removed {task}")


@branch_app.command("list")
def branch_list(store: Path = typer.Argument(...)):
    """List the store's branches."""
    _out(*_branch_lines(store))


@app.command()
def check(recipe_path: Path = typer.Argument(..., metavar="RECIPE")):
    """Validate a recipe and its data files without training."""
    from toolchain import backbone
    from toolchain.config import load_recipe
    from toolchain.data import load_task, read_examples

    recipe = load_recipe(recipe_path)
    bb = backbone.load(recipe.backbone_spec)
    recipe.check_positions(bb.cfg)
    tok = bb.tokenizer()
    for t in recipe.tasks:
        if t.layers:
            from toolchain.train import check_layers

            check_layers([t.layers], bb.depth, f"task {t.name!r}: ")
        d = load_task(recipe, t, tok)
        _out(*d.notes, err=True)
        test = f" / {len(read_examples(recipe, t, 'test'))} test" if t.test else ""  # held out: read by `plan`
        _out(f"{t.name}: {t.type}, {len(d.train)} train / {len(d.dev)} dev{test}, "
             f"{len(d.labels) or 'regression'} labels, metric {t.metric}")
    _out(f"ok: {recipe_path} (backbone {recipe.backbone}, {bb.depth} layers)")


@app.command()
def version():
    """Print the toolchain version."""
    _out(__version__)


def main():
    import logging

    from runtime_py import BundleError, InputError

    # Third-party import chatter (torchao registering types with torch) is not for our users' stderr.
    for name in ("torch.utils._pytree", "torchao"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from toolchain.quiet import route

    debug = bool(os.environ.get("CTB_DEBUG"))
    route(verbose=debug or "--verbose" in sys.argv[1:2])
    from typer import Abort

    try:  # newer typer vendors click; older ones use click itself
        from typer._click.exceptions import ClickException
    except ImportError:
        from click.exceptions import ClickException

    from toolchain.quiet import terminal

    try:  # not standalone: usage errors come here, to be shown on the terminal (fd 2 may be the log)
        code = app(prog_name="ctb-mobile", standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except ClickException as e:
        e.show(file=terminal())
        sys.exit(e.exit_code)
    except Abort:
        sys.exit(_one_line("interrupted; finished runs are kept, and an unfinished run resumes from its last epoch",
                           130))
    except (UserError, BundleError, InputError) as e:
        if debug:
            raise
        sys.exit(_one_line(f"error: {e}", 2))
    except KeyboardInterrupt:
        sys.exit(_one_line("interrupted; finished runs are kept, and an unfinished run resumes from its last epoch",
                           130))
    except Exception as e:  # noqa: BLE001 - every other failure is named in one line, or called a bug
        if debug:
            raise
        sys.exit(_one_line(*_named(e)))


def _named(e: Exception) -> tuple:
    """(one-line message, exit code) for an exception that is not a UserError: a full disk (whatever
    library raised it), an unsafe pickle, input nested too deeply, a path the library did not check
    (exit 2), else a bug (exit 1)."""
    import errno
    import pickle

    chain, c = [], e
    while c is not None and all(c is not x for x in chain):
        chain.append(c)
        c = c.__cause__ or c.__context__
    for c in chain:
        if (isinstance(c, OSError) and c.errno == errno.ENOSPC) or "No space left on device" in str(c) \
                or "os error 28" in str(c):
            where = getattr(c, "filename", None)
            return (f"error: disk full{f' writing {where}' if where else ''} (no space left on the device); free "
                    "some space and run the command again (what was there before is kept)", 2)
    if any(isinstance(c, pickle.UnpicklingError) for c in chain):
        return ("error: refused to load a file that holds pickled code, not plain tensors (a damaged or tampered "
                "checkpoint or weights file); delete it (a run's ckpt/ folder: the run starts again) and rerun", 2)
    if isinstance(e, RecursionError):
        return ("error: an input file nests arrays or objects too deeply to be read (a damaged or hostile JSON or "
                "TOML file); restore or rewrite it", 2)
    if isinstance(e, OSError):  # a user path the library did not check: permissions, a folder for a file
        return (f"error: {e.filename or 'a file'}: {e.strerror or e}; check the path, its permissions and the "
                "free disk space", 2)
    return (f"error: internal error ({type(e).__name__}: {_no_unsafe_advice(str(e))}); rerun with CTB_DEBUG=1 "
            "for the traceback and report it", 1)


def _no_unsafe_advice(message: str) -> str:
    """A library's message without any sentence advising to turn safe loading off (torch's
    "weights_only=False"): running a file's pickled code is never the fix."""
    import re

    return " ".join(s for s in re.split(r"(?<=[.!?])\s+", message) if "weights_only" not in s)[:300]


def _one_line(message: str, code: int) -> int:
    _out(" ".join(message.split()), err=True)
    return code


if __name__ == "__main__":
    main()
