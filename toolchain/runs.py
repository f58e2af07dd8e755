"""What training and distillation share around the training loop: the setup of one command (`Setup`), one
run (`Run`), and its folder, saved and loaded as one and reused when it already finished (`run_or_reuse`).

A run folder (Workspace.run for a teacher, Workspace.student for a distilled student):
  branch.safetensors, branch.json   the branch, written and read together (toolchain.branch_config)
  result.json                       dev metric per epoch, losses, timings, data fingerprint and settings;
                                    written last: it marks the run finished
  ckpt/epoch-<k>/                   accelerate's state after the last epoch while the run is under way
"""

import hashlib
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from runtime_py.bundle import file_sha256
from toolchain import UserError, __version__
from toolchain.branch_config import FILE, WEIGHTS, BranchConfig, NewerFormat, save_branch, weights_bytes
from toolchain.fsutil import check_replaceable, read_json, write_json_atomic
from toolchain.workspace import Workspace

RESULT = "result.json"


@dataclass
class Setup:
    """What every run of one `train` or `distill` shares."""

    recipe: object  # toolchain.config.Recipe
    bb: object  # toolchain.backbone.Backbone
    ws: Workspace
    accelerator: object  # accelerate.Accelerator
    use_cache: bool = True  # the frozen trunk's features come from (and go to) ws.cache
    progress: object = None  # rich.progress.Progress

    @property
    def cache_dir(self) -> Path | None:
        return self.ws.cache if self.use_cache else None

    def say(self, message: str) -> None:
        say(self.progress.console, message)


@dataclass(frozen=True)
class Run:
    """One training or distillation run: what it trains on, with which settings, and where it is written."""

    task: object  # toolchain.config.TaskConfig
    data: object  # toolchain.data.TaskData
    layers: int  # the branch's own layers
    seed: int
    folder: Path
    cfg: object  # the toolchain.config.TrainConfig it trains with
    settings: dict  # what its result depends on besides its data (kept in result.json)
    label: str  # its progress line


def say(console, message: str) -> None:
    """One line for the user on stderr (through the progress display's console when there is one)."""
    console.print(message, markup=False, highlight=False, soft_wrap=True)


def make_accelerator(mixed_precision: str = "auto"):
    """One Accelerator for CPU, one GPU, or N processes under torchrun / `accelerate launch`.

    On a machine without a GPU it is told so (`cpu=True`): that is what makes accelerate join the
    processes torchrun started through gloo instead of running each as a lone process. The recipe's
    batch_size is the global batch: N processes take batch_size / N rows each (`split_batches`), so
    a run gives the same steps, schedule and result whatever N is.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    cuda = torch.cuda.is_available()
    if mixed_precision == "auto":
        mixed_precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "no"
    cpu = not (cuda or torch.backends.mps.is_available())  # Apple GPUs keep accelerate's own choice
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu,
                       dataloader_config=DataLoaderConfiguration(split_batches=True))


def is_main_process() -> bool:
    """Whether this process writes files and prints (always, outside a multi-process launch)."""
    from accelerate import PartialState

    return PartialState().is_main_process


@contextmanager
def start(recipe, bb, ws: Workspace, *, use_cache: bool = True, console=None):
    """The Setup of one command, with its progress display on `console` (silent on all but the main process)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    accelerator = make_accelerator(recipe.train.mixed_precision)
    if not accelerator.is_main_process:
        console = Console(quiet=True)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=True) as progress:
        yield Setup(recipe, bb, ws, accelerator, use_cache, progress)


def load_datas(setup: Setup, tasks) -> dict:
    """task name -> TaskData for each task, its notes (rows lost to caps or truncation) printed."""
    from toolchain.data import load_task

    tok, progress, datas = setup.bb.tokenizer(), setup.progress, {}
    bar = progress.add_task("[magenta]load data", total=len(tasks))
    for t in tasks:
        progress.update(bar, description=f"[magenta]load data: {t.name}")
        datas[t.name] = load_task(setup.recipe, t, tok)
        for note in datas[t.name].notes:
            setup.say(note)
        progress.advance(bar)
    progress.update(bar, visible=False)
    return datas


# ---------------------------------------------------------------------------------------------
# A run folder: saved as one, read back when finished, reused or replaced


def data_fingerprint(data) -> str:
    return data.train.fingerprint()[:16] + data.dev.fingerprint()[:16]


def run_result(state: dict, run: Run, setup: Setup, features, cache_seconds: float, **extra) -> dict:
    """result.json of a run that finished training (fit's state), `extra` after the task name."""
    acc = setup.accelerator
    return {
        "task": run.task.name, **extra, "metric": run.task.metric, "dev_metric": state["history"][-1][run.task.metric],
        **{k: state[k] for k in ("history", "losses", "epoch_seconds", "rows_per_process")},
        "cache": setup.use_cache, "cache_hit": features.cache_hit, "cache_seconds": cache_seconds,
        "train_examples": len(run.data.train), "dev_examples": len(run.data.dev), "dev_dropped": run.data.dropped_dev,
        "data_fingerprint": data_fingerprint(run.data), "settings": run.settings,
        "device": str(acc.device), "mixed_precision": acc.mixed_precision, "processes": acc.num_processes,
    }


def save_run(setup: Setup, run: Run, branch, result: dict, *, attach: int, distilled_from=None) -> None:
    """Write a finished run (main process only): the branch's weights and config together, then result.json,
    which marks it finished; then its checkpoints go."""
    if not setup.accelerator.is_main_process:
        return
    recipe, bb, data = setup.recipe, setup.bb, run.data
    weights = weights_bytes(branch)
    config = BranchConfig(
        task=run.task.name, type=run.task.type, labels=list(data.labels), attach=attach, layers=run.layers,
        metric=run.task.metric, backbone_fingerprint=bb.fingerprint, dev_metric=result["dev_metric"], seed=run.seed,
        max_seq_len=recipe.seq_len(run.task), pair=any(ex.text_pair is not None for ex in data.dev_examples),
        hidden_size=bb.cfg.hidden_size, backbone=recipe.backbone, toolchain_version=__version__,
        weights_sha256=hashlib.sha256(weights).hexdigest(), distilled_from=distilled_from)
    save_branch(run.folder, weights, config)
    write_json_atomic(run.folder / RESULT, result)
    shutil.rmtree(run.folder / "ckpt", ignore_errors=True)


def finished(run: Run, backbone_fingerprint: str) -> tuple[dict | None, str]:
    """(result, "") when the run's folder holds a finished run on this backbone, exactly this data (same token
    ids) and these settings, with its branch files intact; else (None, why not). A branch.json from a newer
    ctb-mobile is refused (NewerFormat: upgrade), never replaced."""
    if not (run.folder / RESULT).is_file():
        return None, "it did not finish"
    res = _read_result(run.folder)
    if res is None:
        return None, f"its {RESULT} is unreadable"
    same = res["data_fingerprint"] == data_fingerprint(run.data) if "data_fingerprint" in res \
        else res.get("train_examples") == len(run.data.train)  # runs written before fingerprints were recorded
    if not same or res.get("settings", run.settings) != run.settings:
        return None, "it was trained on other data or settings"
    try:
        config = BranchConfig.load(run.folder)
    except NewerFormat:
        raise
    except UserError as e:
        return None, f"its {FILE} is unusable: {e}"
    if file_sha256(run.folder / WEIGHTS) != config.weights_sha256:
        return None, f"its {WEIGHTS} does not match the sha256 in its {FILE}"
    if config.backbone_fingerprint != backbone_fingerprint:
        return None, "it was trained on another backbone"
    return res, ""


def _read_result(run_dir: Path) -> dict | None:
    """result.json's content; None when there is none or it is not a JSON object."""
    try:
        res = read_json(run_dir / RESULT)
    except UserError:
        return None
    return res if isinstance(res, dict) else None


def replaced(console, run_dir: Path, why: str) -> None:
    """Delete a run that is about to be redone, naming it, why, and the score it had."""
    res = _read_result(run_dir)
    had = f", dev {res.get('dev_metric')}" if res else ""
    check_replaceable(run_dir, "run")  # a run folder only, never a folder the user put there
    say(console, f"replacing {run_dir} ({why}{had})")
    shutil.rmtree(run_dir)


def run_or_reuse(setup: Setup, run: Run, make, *, force: bool = False) -> dict:
    """The run's result: its folder's when it already finished on this backbone, data and settings with intact
    files (and not `force`), else `make()`'s, once a forced, stale or damaged run in its place is removed with a
    line saying why. An interrupted run's checkpoint is kept: `make` resumes from it."""
    res, why = (None, "--force") if force else finished(run, setup.bb.fingerprint)
    if res is not None:
        return res
    stale = force or (run.folder / RESULT).exists()
    if stale and run.folder.exists() and setup.accelerator.is_main_process:
        replaced(setup.progress.console, run.folder, why)
    setup.accelerator.wait_for_everyone()
    return make()
