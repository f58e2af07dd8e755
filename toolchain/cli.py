"""The `ctb-mobile` command line: thin commands over library functions.

Errors the user can fix are printed as one line (`error: ...`) with exit code 2; set
CTB_DEBUG=1 to see the full traceback instead.
"""

import os
import sys
from pathlib import Path

import typer

from toolchain import UserError, __version__

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="ctb-mobile: many BERT tasks on a phone for the price of little more than one.")


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


def _out_dir(recipe, out: Path | None) -> Path:
    return out if out is not None else recipe.root / recipe.name


@app.command()
def train(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE", help="recipe file, e.g. models/assistant.toml"),
    task: list[str] = typer.Option(None, "--task", "-t", help="train only this task (repeatable)"),
    layers: str = typer.Option(None, help="sweep: fine-tune the top L layers for each L, e.g. 1,2,3,4,5,6"),
    seeds: str = typer.Option(None, help="seeds per L, e.g. 0,1,2 (default: the recipe's seed)"),
    out: Path = typer.Option(None, help="output folder (default: next to the recipe, named after it)"),
    cache: bool = typer.Option(True, help="reuse frozen-trunk features across epochs and runs"),
    force: bool = typer.Option(False, help="retrain runs that already finished"),
    max_train: int = typer.Option(None, help="cap each task's train set (seeded random subset)"),
    max_dev: int = typer.Option(None, help="cap each task's dev set (seeded random subset)"),
    epochs: int = typer.Option(None, help="override the recipe's epochs"),
):
    """Partially fine-tune each task's top L layers; with --layers, sweep L and select one per task."""
    from rich.console import Console
    from rich.table import Table

    from toolchain.config import load_recipe
    from toolchain.train import run_sweep

    recipe = load_recipe(recipe_path).override(max_train, max_dev, epochs)
    out_dir = _out_dir(recipe, out)
    console = Console(stderr=True)
    summary = run_sweep(recipe, task, _ints(layers, "layers"), _ints(seeds, "seeds"), out_dir,
                        use_cache=cache, force=force, console=console)
    table = Table(title=f"{recipe.name}: selected L ({summary['rule']})")
    for col in ("task", "L", "attach depth", "metric", "dev", "run"):
        table.add_column(col)
    depth = summary.get("depth")
    for name, s in summary["selected"].items():
        table.add_row(name, str(s["layers"]), str(depth - s["layers"]) if depth else "-", s["metric"],
                      f"{s['dev_metric']:.2f}", s["run"])
    Console().print(table)
    Console().print(f"results: {out_dir / 'sweep.json'}")


@app.command()
def check(recipe_path: Path = typer.Argument(..., metavar="RECIPE")):
    """Validate a recipe and its data files without training."""
    from toolchain import backbone
    from toolchain.config import load_recipe
    from toolchain.data import load_task

    recipe = load_recipe(recipe_path)
    bb = backbone.load(recipe.backbone_spec)
    tok = bb.tokenizer()
    for t in recipe.tasks:
        if t.layers:
            from toolchain.train import check_layers

            check_layers([t.layers], bb.depth, f"task {t.name!r}: ")
        d = load_task(recipe, t, tok)
        typer.echo(f"{t.name}: {t.type}, {len(d.train)} train / {len(d.dev)} dev, "
                   f"{len(d.labels) or 'regression'} labels, metric {t.metric}")
    typer.echo(f"ok: {recipe_path} (backbone {recipe.backbone}, {bb.depth} layers)")


@app.command()
def version():
    """Print the toolchain version."""
    typer.echo(__version__)


def main():
    try:
        app(standalone_mode=False)
    except UserError as e:
        if os.environ.get("CTB_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; finished runs are kept, and an unfinished run resumes from its last epoch",
              file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # click usage errors and the like
        import click

        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
