"""The `vitfast` command line: parses flags, calls the library, prints results.

Installed as ``vitfast.cli``; run it as ``vitfast`` or ``python -m vitfast``.
"""

from __future__ import annotations

import contextlib
import enum
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer
import typer.core

from vitfast.choices import (ATTENTION_BACKENDS, AUTO, CONVERT_SOURCES, DTYPE_NAMES, EXPORT_TARGETS, KERNEL_MODES,
                             MODEL_MODES)

# The commands import vitfast's torch-heavy modules in their bodies (the one place where vitfast imports
# its own modules lazily), so that `vitfast --help` stays fast; the imports below are for type hints.
if TYPE_CHECKING:
    from typing import Any, Callable, Iterable, Iterator

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from vitfast.bench.model import ModelSweep
    from vitfast.bench.sweep import KernelSweep

class _OneLineUsageErrors(typer.core.TyperGroup):
    """The root group: a usage error anywhere below it (a bad or missing value, an unknown option or
    command, a rule between flags) is one ``error:`` line on stderr and exit code 2, not click's panel."""

    def make_context(self, info_name, args, *rest, **kwargs):
        with _usage_errors():
            return super().make_context(info_name, _bare_flags(list(args)), *rest, **kwargs)

    def invoke(self, ctx):
        with _usage_errors():
            return super().invoke(ctx)


# Options whose value may be left out, and what they mean alone (typer has no optional option values).
_OPTIONAL_VALUES = {"--pretrained": "default"}


def _bare_flags(args: list[str]) -> list[str]:
    """`--pretrained` with no value after it (the end, or another option next) as `--pretrained=default`."""
    out = []
    for i, arg in enumerate(args):
        bare = arg in _OPTIONAL_VALUES and (i + 1 == len(args) or args[i + 1].startswith("-"))
        out.append(f"{arg}={_OPTIONAL_VALUES[arg]}" if bare else arg)
    return out


# click's UsageError, the base of every parse error (typer >= 0.22 vendors click, so it is reached from a
# class typer exports rather than imported from either package).
_UsageError = typer.BadParameter.__mro__[1]


@contextlib.contextmanager
def _usage_errors() -> Iterator[None]:
    try:
        yield
    except _UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `vitfast` alone prints the help; typer checks the same way
            raise
        param = getattr(exc, "param", None)
        if isinstance(exc, typer.BadParameter) and exc.message:  # a value refused: the line names its flag
            flag = "" if param is None else _flag(param)
            text = exc.message.removeprefix("Value error, ")  # typer >= 0.22 words a bad choice through pydantic
            message = text if text.startswith(flag) else f"{flag}: {text}"
        else:
            message = exc.format_message()
        message = message.rstrip() if message.rstrip().endswith((".", "?", "!")) else f"{message.rstrip()}."
        raise _fail(message if exc.ctx is None else f"{message} See {exc.ctx.command_path} --help.") from None


def _flag(param) -> str:
    """How the user wrote a flag: its long name (an argument: its name in capitals)."""
    return max(param.opts, key=len) if param.param_type_name == "option" else param.human_readable_name


def _check(ok: Callable[[Any], bool], must: str):
    """A flag's range check, run while the command line is parsed (before any data is read): a value
    for which `ok` is false is refused with "--flag must <must>; got <value>." (an unset flag passes)."""

    def callback(param: typer.CallbackParam, value):
        if value is not None and not ok(value):
            raise typer.BadParameter(f"{_flag(param)} must {must}; got {value!r}.")
        return value

    return callback


_AT_LEAST_1 = _check(lambda v: v >= 1, "be at least 1")
_AT_LEAST_0 = _check(lambda v: v >= 0, "be at least 0")
_NON_NEGATIVE = _check(lambda v: 0 <= v < math.inf, "be finite and at least 0")
_POSITIVE = _check(lambda v: 0 < v < math.inf, "be finite and above 0")


def _one_character(param: typer.CallbackParam, value: str) -> str:
    """--csv-separator: one character once '\\t'-style escapes are read."""
    try:
        ok = len(_unescape(value)) == 1
    except UnicodeDecodeError:
        ok = False
    if not ok:
        raise typer.BadParameter(f"{_flag(param)} must be one character, like ',' or '\\t'; got {value!r}.")
    return value


def _size(param: typer.CallbackParam, value: str) -> str:
    """A size like 5GB (vitfast.files.parse_size), above zero."""
    from vitfast.files import parse_size

    try:
        ok = parse_size(value) > 0
    except ValueError:
        ok = False
    if not ok:
        raise typer.BadParameter(f"{_flag(param)} must be a size above zero, like 5GB, 500MB or 2GiB; got {value!r}.")
    return value


app = typer.Typer(
    name="vitfast",
    cls=_OneLineUsageErrors,
    help="Vision transformers (ViT, Swin, CLIP) on fused Triton kernels.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Benchmark kernels against eager PyTorch and torch's SDPA.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

# Options several commands share (the bench commands all of these), declared once; Typer reads them
# per command.
_QUIET = typer.Option(False, "--quiet", "-q", help="No progress bar or log lines on stderr.")
_BENCH_DTYPE = typer.Option(AUTO, "--dtype", help="bf16, fp16, fp32, or auto: bf16 on CUDA, fp32 on CPU.")
_BENCH_DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")
_BENCH_WARMUP = typer.Option(None, "--warmup", show_default=False, callback=_AT_LEAST_0,
                             help="Untimed calls before timing. Default: 10 on CUDA, 1 on CPU.")
_BENCH_REP = typer.Option(None, "--rep", show_default=False, callback=_AT_LEAST_1,
                          help="Timed calls; their median is reported. Default: 100 on CUDA, 3 on CPU.")
_BENCH_JSON = typer.Option(None, "--json", help="Also write the results as JSON here.")
_BENCH_PLOT = typer.Option(None, "--plot", help="Also save a PNG of time against peak memory.")
_AMP_DTYPE = typer.Option(AUTO, "--amp-dtype", help="Autocast dtype; auto: bf16 on CUDA, fp32 (no autocast) on CPU.")
_ATTN_BACKEND = typer.Option(AUTO, "--attn-backend",
                             help="Attention kernels; auto: Triton where a GPU run measured it faster, else SDPA.")
_PRETRAINED = typer.Option(None, "--pretrained", show_default=False, metavar="[TAG]",
                           help="Start from published weights: alone, the tag in --model (timm's name.tag) or timm's "
                           "default; or a tag (open_clip's laion2b_s34b_b79k, openai ...), hf-hub:ORG/NAME or a "
                           "local repo folder. Offline: HF_HUB_OFFLINE=1 reads the Hub cache only.")
_TF32 = typer.Option(True, "--tf32/--no-tf32",
                     help="TF32 for float32 matmuls on CUDA, as timm and open_clip; --no-tf32: exact float32.")


def _choice(name: str, values: tuple[str, ...]) -> type[enum.Enum]:
    """A typed flag value, from the library's own list: the parser refuses a typo and --help lists `values`."""
    return enum.Enum(name, [(v, v) for v in values], type=str)


_Dtype = _choice("Dtype", (AUTO, *DTYPE_NAMES))
_ExactDtype = _choice("ExactDtype", DTYPE_NAMES)
_AttnBackend = _choice("AttnBackend", ATTENTION_BACKENDS)
_Source = _choice("Source", CONVERT_SOURCES)
_Target = _choice("Target", EXPORT_TARGETS)
_KernelMode = _choice("KernelMode", (*KERNEL_MODES, "both"))
_ModelMode = _choice("ModelMode", (*MODEL_MODES, "both"))


@app.callback()
def _root() -> None:
    """Vision transformers (ViT, Swin, CLIP) on fused Triton kernels."""


@app.command("train")
def train_command(
    ctx: typer.Context,
    model: str = typer.Option("vit_micro_patch4_32", "--model", "-m", help="Model name (see --list-models)."),
    data_dir: Path | None = typer.Option(None, "--data-dir",
                                         help="ImageFolder root with train/ and val/. Default: the built-in set."),
    epochs: int = typer.Option(10, "--epochs", callback=_AT_LEAST_1),
    batch_size: int = typer.Option(128, "--batch-size", "-b", callback=_AT_LEAST_1, help="Per process."),
    lr: float = typer.Option(2e-3, "--lr", callback=_POSITIVE, help="Peak learning rate (AdamW); above 0."),
    min_lr: float = typer.Option(1e-5, "--min-lr", callback=_NON_NEGATIVE,
                                 help="Cosine schedule floor; from 0 to --lr."),
    weight_decay: float = typer.Option(0.05, "--weight-decay", callback=_NON_NEGATIVE),
    warmup_epochs: float = typer.Option(1.0, "--warmup-epochs", callback=_NON_NEGATIVE),
    amp_dtype: _Dtype = _AMP_DTYPE,
    grad_accum_steps: int = typer.Option(1, "--grad-accum-steps", callback=_AT_LEAST_1),
    grad_checkpointing: bool = typer.Option(False, "--grad-checkpointing"),
    fsdp: bool = typer.Option(False, "--fsdp", help="Shard the model, gradients and optimizer state over torchrun's "
                              "processes with FSDP2 instead of replicating them with DDP (saves distributed "
                              "checkpoints)."),
    dcp: bool = typer.Option(False, "--dcp", help="Save the training state as distributed checkpoints (every "
                             "process writes its part into OUTPUT/train_state/), as --fsdp always does; a resume "
                             "on another number of processes reads either kind."),
    keep_checkpoints: int = typer.Option(1, "--keep-checkpoints", callback=_AT_LEAST_1,
                                         help="Distributed checkpoints to keep in OUTPUT/train_state/, newest "
                                         "first."),
    clip_grad: float | None = typer.Option(None, "--clip-grad", callback=_POSITIVE,
                                           help="Clip the gradient norm to this; above 0."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model."),
    attn_backend: _AttnBackend = _ATTN_BACKEND,
    output: Path = typer.Option(Path("output/train"), "--output", "-o", help="Checkpoints and metrics go here."),
    resume: str | None = typer.Option(None, "--resume", help="A checkpoint folder, or 'latest' (in --output); "
                                      "the flags must be the saved run's (--epochs may grow)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the training run already in --output "
                                   "(only the files training writes; others stay)."),
    seed: int = typer.Option(42, "--seed"),
    workers: int = typer.Option(2, "--workers", "-j", callback=_AT_LEAST_0, help="DataLoader worker processes."),
    img_size: int | None = typer.Option(None, "--img-size", callback=_AT_LEAST_1,
                                        help="Default: the model's; a multiple of its patch size."),
    drop_path: float | None = typer.Option(None, "--drop-path", callback=_check(lambda v: 0 <= v < 1, "be in [0, 1)"),
                                           help="Stochastic depth rate, in [0, 1)."),
    skip_bad_images: bool = typer.Option(False, "--skip-bad-images", help="Skip (and count) unreadable images."),
    train_data: Path | None = typer.Option(None, "--train-data",
                                           help="CLIP: CSV/TSV of image-text pairs, or tar shards "
                                           "('shards/{00000..00099}.tar', webdataset's layout). "
                                           "Default: the built-in data's captions."),
    val_data: Path | None = typer.Option(None, "--val-data",
                                         help="CLIP: CSV/TSV or tar shards of pairs for retrieval metrics."),
    csv_img_key: str = typer.Option("filepath", "--csv-img-key", help="CLIP: the image-path column."),
    csv_caption_key: str = typer.Option("title", "--csv-caption-key", help="CLIP: the caption column."),
    csv_separator: str = typer.Option("\t", "--csv-separator", callback=_one_character,
                                      help="CLIP: the tables' separator, one character."),
    tokenizer: str | None = typer.Option(
        None, "--tokenizer", help="CLIP: a tokenizer.json, 'clip' (CLIP's BPE) or 'train' (a BPE on the captions). "
        "Default: 'clip' for CLIP-sized vocabularies, else 'train'."),
    bpe_path: Path | None = typer.Option(None, "--bpe-path", help="CLIP's bpe_simple_vocab_16e6.txt.gz "
                                         "(default: the copy inside an installed open_clip)."),
    pretrained: str | None = _PRETRAINED,
    layer_decay: float | None = typer.Option(None, "--layer-decay", help="Layer-wise learning-rate decay for "
                                             "fine-tuning ViT and Swin (timm's), e.g. 0.75; in (0, 1]."),
    list_models: bool = typer.Option(False, "--list-models", help="Print the model names and exit (with "
                                     "--pretrained: the pretrained tags, name.tag)."),
    tf32: bool = _TF32,
    quiet: bool = _QUIET,
) -> None:
    """Train an image classifier or a CLIP; on a GPU, or on several with `torchrun --nproc_per_node N`.

    With --pretrained, start from published weights (fine-tuning): a folder with another class count gets a
    new head, another --img-size resamples the position embeddings, as timm does.

    CLIP models (e.g. clip_tiny, ViT-B-32) train on image-text pairs (--train-data) and report
    zero-shot accuracy on the val split of --data-dir and retrieval recall on --val-data.
    """
    if min_lr > lr:
        raise typer.BadParameter(f"--min-lr must be at most --lr ({lr}); got {min_lr}.")
    if list_models:
        import vitfast

        print("\n".join(vitfast.list_models(pretrained=pretrained is not None)))
        return
    from vitfast.train import TrainConfig, train

    cfg = TrainConfig(
        model=model, data_dir=None if data_dir is None else str(data_dir), output=str(output), epochs=epochs,
        batch_size=batch_size, lr=lr, min_lr=min_lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
        amp_dtype=amp_dtype.value, grad_accum_steps=grad_accum_steps, grad_checkpointing=grad_checkpointing, fsdp=fsdp,
        dcp=dcp, keep_checkpoints=keep_checkpoints,
        clip_grad=clip_grad, compile=compile, attn_backend=attn_backend.value, resume=resume, seed=seed,
        workers=workers, img_size=img_size, drop_path=drop_path, skip_bad_images=skip_bad_images, quiet=quiet,
        train_data=_str_or_none(train_data), val_data=_str_or_none(val_data), csv_img_key=csv_img_key,
        csv_caption_key=csv_caption_key, csv_separator=_unescape(csv_separator), tokenizer=tokenizer,
        bpe_path=_str_or_none(bpe_path), overwrite=overwrite, pretrained=pretrained, layer_decay=layer_decay,
    )
    from vitfast.train import Interrupted, TrainUsageError

    err = _stderr()
    log = (lambda msg: None) if quiet else (lambda msg: err.print(msg, markup=False))
    _kernel_setup(tf32, quiet)
    with _user_errors():
        try:
            metrics = train(cfg, progress_factory=None if quiet else _epoch_progress(err), log=log)
        except TrainUsageError as exc:  # another run in --output, a resume with changed flags
            raise _fail(str(exc), 2) from None
        except Interrupted as exc:  # SIGINT or SIGTERM, after saving: exit 130 or 143, as shells report them
            if os.environ.get("RANK", "0") == "0":
                err.print(f"{exc.saved}; continue with: {_resume_command(ctx)}", markup=False, soft_wrap=True)
            raise typer.Exit(128 + exc.signum) from None
    if metrics and os.environ.get("RANK", "0") == "0":  # under torchrun, one table, from rank 0
        _print_result(metrics, json_out=False)


def _resume_command(ctx: typer.Context) -> str:
    """The `vitfast train` command line that continues this run: its flags that differ from their
    defaults, with --resume latest."""
    import shlex

    words = [*_launcher_words(os.environ), "train"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        value = getattr(value, "value", value)  # a choice
        default = getattr(param.default, "value", param.default)
        if param.name in ("resume", "overwrite") or value is None or str(value) == str(default):
            continue
        if param.is_flag:
            words.append(param.opts[0] if value else param.secondary_opts[0])
        else:
            words += [max(param.opts, key=len), str(value)]
    return shlex.join([*words, "--resume", "latest"])


def _launcher_words(env) -> list[str]:
    """How this process was started, for the resume line: `vitfast`, or under torchrun (its variables
    in `env`) `torchrun --nproc_per_node N -m vitfast`, with --nnodes past one node (the rendezvous
    flags are the user's own)."""
    if "TORCHELASTIC_RUN_ID" not in env or "LOCAL_WORLD_SIZE" not in env:
        return ["vitfast"]
    per_node, world = int(env["LOCAL_WORLD_SIZE"]), int(env.get("WORLD_SIZE", env["LOCAL_WORLD_SIZE"]))
    nodes = ["--nnodes", str(world // per_node)] if world > per_node else []
    return ["torchrun", *nodes, "--nproc_per_node", str(per_node), "-m", "vitfast"]


@app.command("eval")
def eval_command(
    model_dir: Path | None = typer.Option(None, "--model-dir", help="A model folder written by `vitfast train`, "
                                          "`convert` or `save`."),
    model: str | None = typer.Option(None, "--model", "-m", help="Instead of --model-dir: published weights by "
                                     "name, with --pretrained (timm's name.tag, open_clip's name, hf-hub:ORG/NAME)."),
    pretrained: str | None = _PRETRAINED,
    revision: str | None = typer.Option(None, "--revision", help="With --model: the Hub repo's branch, tag or "
                                        "commit."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="ImageFolder root; default: the built-in set. "
                                         "A CLIP on ImageNet (synset folders) gets OpenAI's class names and "
                                         "prompts."),
    batch_size: int = typer.Option(256, "--batch-size", "-b", callback=_AT_LEAST_1),
    workers: int = typer.Option(2, "--workers", "-j", callback=_AT_LEAST_0),
    amp_dtype: _Dtype = _AMP_DTYPE,
    attn_backend: _AttnBackend = _ATTN_BACKEND,
    json_out: bool = typer.Option(False, "--json", help="Print the metrics as JSON (strict: NaN and ±inf as null)."),
    skip_bad_images: bool = typer.Option(False, "--skip-bad-images"),
    val_data: Path | None = typer.Option(None, "--val-data",
                                         help="CLIP: CSV/TSV or tar shards of image-text pairs for retrieval."),
    csv_img_key: str = typer.Option("filepath", "--csv-img-key", help="CLIP: the image-path column."),
    csv_caption_key: str = typer.Option("title", "--csv-caption-key", help="CLIP: the caption column."),
    csv_separator: str = typer.Option("\t", "--csv-separator", callback=_one_character,
                                      help="CLIP: the table's separator, one character."),
    tf32: bool = _TF32,
    quiet: bool = _QUIET,
) -> None:
    """Evaluate a saved model (--model-dir) or published weights (--model NAME --pretrained [TAG]): a
    classifier's top-1, top-5, loss and images/s on the val split, with the eval transforms the weights were
    published with; a CLIP's zero-shot top-1/top-5 on the val split of --data-dir and image/text retrieval
    R@1/5/10 on --val-data (with neither, both on the built-in data)."""
    if model_dir is None and model is None:
        raise typer.BadParameter("give --model-dir (a vitfast model folder) or --model NAME --pretrained [TAG].")
    from vitfast.pairs import CsvFormat
    from vitfast.train import evaluate_folder

    err = _stderr()
    _kernel_setup(tf32, quiet)
    with _user_errors(), _progress(err, quiet) as progress:
        metrics = evaluate_folder(model_dir, data_dir, model=model, pretrained=pretrained, revision=revision,
                                  batch_size=batch_size, workers=workers,
                                  amp_dtype=amp_dtype.value, attn_backend=attn_backend.value,
                                  skip_bad_images=skip_bad_images, val_data=val_data,
                                  csv_format=CsvFormat(csv_img_key, csv_caption_key, _unescape(csv_separator)),
                                  track=lambda loader, what: progress.track(loader, description=what))
    _print_result(metrics, json_out=json_out)


@app.command("convert")
def convert_command(
    src: str = typer.Argument(..., help="A checkpoint: timm ViT/Swin (.safetensors, .pth, .bin, .pth.tar), "
                              "a Hugging Face folder (ViT, Swin, CLIP), OpenAI CLIP (.pt) or open_clip; or a Hub "
                              "repo, hf-hub:ORG/NAME (timm's, open_clip's or transformers' layout)."),
    dst: Path = typer.Argument(..., help="The vitfast model folder to write."),
    source: _Source = typer.Option(AUTO, "--from", help="Where the weights come from; auto: read from them."),
    model: str | None = typer.Option(None, "--model", "-m", help="The vitfast config with these shapes, when "
                                     "the weights leave a choice (a ViT's head count, QuickGELU)."),
    dtype: _ExactDtype | None = typer.Option(None, "--dtype", show_default=False,
                                             help="Cast the weights; default: the source's dtype."),
    max_shard_size: str = typer.Option("5GB", "--max-shard-size", callback=_size),
    tokenizer: Path | None = typer.Option(None, "--tokenizer", help="CLIP: a vitfast tokenizer.json, CLIP's "
                                          "bpe_simple_vocab_16e6.txt.gz, or 'clip' (that file from open_clip); "
                                          "default: a Hugging Face folder's own tokenizer files, else CLIP's BPE "
                                          "for 49408-token vocabularies."),
    revision: str | None = typer.Option(None, "--revision", help="With hf-hub:ORG/NAME: a branch, tag or commit."),
    force: bool = typer.Option(False, "--force", help="Replace DST if it exists."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip the comparison with the source library."),
    to: _Target | None = typer.Option(None, "--to", show_default=False,
                                      help="Export a vitfast folder instead: timm (ViT, Swin) or hf "
                                      "(ViT, Swin, CLIP)."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Convert another project's weights into a vitfast model folder and check the outputs match, or
    (--to) export a vitfast folder for timm or Hugging Face transformers."""
    from vitfast.convert import convert, export

    with _user_errors("DST"):
        if to is not None:
            report = export(src, dst, to=to.value, max_shard_size=max_shard_size, force=force)
        else:
            report = convert(src, dst, source=source.value, model=model, dtype=None if dtype is None else dtype.value,
                             max_shard_size=max_shard_size, tokenizer=tokenizer, force=force, verify=not no_verify,
                             revision=revision)
    if "warning" in report and not json_out:
        _stderr().print(f"warning: {report['warning']}", markup=False)
    _print_result(report, json_out=json_out)


def _str_or_none(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _unescape(separator: str) -> str:
    """'\\t' typed on a command line (as open_clip's docs write it) means a tab."""
    return separator.encode().decode("unicode_escape") if "\\" in separator else separator


def _stderr():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def _user_errors(destination: str = "--output") -> Iterator[None]:
    """Turn the library's user-facing errors (ValueError, which DataError and CheckpointError are, and
    TrainingError) and OS errors (a path, what is wrong with it and the fix, `destination` naming where
    output goes) into a one-line message and exit 1, also when a DataLoader worker raised them; Ctrl-C
    into exit 130."""
    try:
        yield
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except Exception as exc:
        from vitfast.data import worker_message
        from vitfast.files import describe_os_error
        from vitfast.train import TrainingError

        if isinstance(exc, OSError):
            raise _fail(worker_message(describe_os_error(exc, destination)), 1) from None
        if isinstance(exc, (ValueError, TrainingError)):
            raise _fail(worker_message(str(exc)), 1) from None
        raise


def _kernel_setup(tf32: bool, quiet: bool) -> None:
    """TF32 on or off (vitfast.runtime.set_tf32), and the kernels' one-line notes (which backend "auto"
    runs and why, logger "vitfast.kernels") printed on stderr unless --quiet."""
    import logging

    from vitfast.runtime import set_tf32

    set_tf32(tf32)
    logger = logging.getLogger("vitfast.kernels")
    if not logger.handlers:  # the records still propagate, to whatever logging the caller set up
        handler = logging.Handler()
        handler.emit = lambda record: _stderr().print(record.getMessage(), markup=False)
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def _epoch_progress(err):
    """A factory of per-epoch rich progress bars on stderr (silent when stderr is not a terminal)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    def start(epoch: int, total: int, done: int):
        progress = Progress(TextColumn(f"epoch {epoch + 1}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=err,
                            transient=True, disable=not err.is_terminal)
        task = progress.add_task("train", total=total, completed=done, info="")
        progress.start()

        def update(step, **m):
            if step is None:
                progress.stop()
                return
            info = (f"loss {m['loss']:.4f}  lr {m['lr']:.2e}  {m['images_per_s']:.0f} img/s  "
                    f"data {1e3 * m['data_time']:.0f} ms")
            progress.update(task, completed=step, info=info)

        return update

    return start


def _strict_json(value):
    """`value` with each NaN or infinite float (a diverged model's loss) as None, null in JSON: strict parsers
    (JSON.parse, jq, Go, Rust) reject Python's bare NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value


def _print_result(metrics: dict, json_out: bool) -> None:
    import json

    if json_out:
        print(json.dumps(_strict_json(metrics), indent=2, allow_nan=False))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, box=None)
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console(highlight=False).print(table)


@bench_app.command("attention")
def bench_attention(
    batch_size: int | None = typer.Option(
        None, "--batch-size", "-b", show_default=False, callback=_AT_LEAST_1,
        help="Batch size B. Default: 64 on CUDA (ViT-B training), 1 on CPU."),
    heads: int = typer.Option(12, "--heads", callback=_AT_LEAST_1, help="Attention heads H."),
    head_dim: int = typer.Option(64, "--head-dim", callback=_AT_LEAST_1, help="Head dim D."),
    dtype: _Dtype = _BENCH_DTYPE,
    seq_lens: str = typer.Option("197,257,577,1025,2048,4096", "--seq-lens",
                                 help="Comma-separated sequence lengths N."),
    backends: str = typer.Option("triton,sdpa,eager", "--backends",
                                 help="Comma-separated: triton, sdpa, eager; or SDPA pinned to one kernel: "
                                      "sdpa-flash, sdpa-efficient, sdpa-cudnn, sdpa-math; or a peer: flex "
                                      "(FlexAttention, compiled), timm (timm's Attention; --module only)."),
    modes: str = typer.Option("fwd,fwd+bwd", "--modes", help="Comma-separated: fwd, fwd+bwd."),
    causal: bool = typer.Option(False, "--causal/--no-causal", help="Causal masking (FLOPs halved)."),
    module: bool = typer.Option(False, "--module", help="Time the whole attention layer: qkv projection → "
                                "attention → output projection of a (B, N, H·D) input, 16-bit under autocast."),
    device: str = _BENCH_DEVICE,
    warmup: int | None = typer.Option(
        None, "--warmup", show_default=False, callback=_AT_LEAST_0,
        help="Untimed calls before timing; the first compiles. Default: 10 on CUDA, 1 on CPU."),
    rep: int | None = _BENCH_REP,
    json_path: Path | None = _BENCH_JSON,
    plot_path: Path | None = _BENCH_PLOT,
    tf32: bool = _TF32,
    quiet: bool = _QUIET,
) -> None:
    """Time, TFLOP/s and peak memory of each attention backend across sequence lengths.

    Peak memory is what one call allocates above its inputs. --module times the whole attention layer.

    A case that cannot run (Triton without CUDA, out of memory, FlexAttention's backward on a CPU) is a
    row that says why.

    Exit code: 0, 1 when no case ran at all, 2 on bad flags.
    """
    from vitfast.bench.attention import plan

    _bench(lambda: plan(batch=batch_size, heads=heads, head_dim=head_dim, dtype=dtype.value,
                        seq_lens=_csv_ints(seq_lens, "--seq-lens"), backends=_csv(backends, "--backends"),
                        modes=_csv(modes, "--modes"), causal=causal, module=module, device=device, warmup=warmup,
                        rep=rep),
           quiet, tf32=tf32, json_path=json_path, plot_path=plot_path)


@bench_app.command("window")
def bench_window(
    batch_size: int | None = typer.Option(
        None, "--batch-size", "-b", show_default=False, callback=_AT_LEAST_1,
        help="Batch size B. Default: 64 on CUDA (the issue's Swin-T reference), 1 on CPU."),
    stages: str = typer.Option("stage1,stage2,stage3", "--stages",
                               help="Comma-separated Swin-T stages at 224: stage1 (56×56, C=96, 3 heads), stage2 "
                                    "(28×28, 192, 6), stage3 (14×14, 384, 12), stage4 (7×7, 768, 24)."),
    window: int = typer.Option(7, "--window", callback=_AT_LEAST_1, help="Window size."),
    shift: int = typer.Option(3, "--shift", callback=_AT_LEAST_0, help="Cyclic shift (0: no shift), below --window."),
    dtype: _Dtype = _BENCH_DTYPE,
    backends: str = typer.Option("triton,sdpa,eager", "--backends",
                                 help="Comma-separated: triton, sdpa, eager; or a peer: flex (FlexAttention, "
                                      "compiled), timm (timm's WindowAttention)."),
    modes: str = typer.Option("fwd,fwd+bwd", "--modes", help="Comma-separated: fwd, fwd+bwd."),
    device: str = _BENCH_DEVICE,
    warmup: int | None = _BENCH_WARMUP,
    rep: int | None = _BENCH_REP,
    json_path: Path | None = _BENCH_JSON,
    plot_path: Path | None = _BENCH_PLOT,
    tf32: bool = _TF32,
    quiet: bool = _QUIET,
) -> None:
    """Time, TFLOP/s and peak memory of each window-attention backend at Swin stage shapes.

    fwd+bwd takes gradients of qkv and the relative-position bias table. Peak memory is what one
    call allocates above its inputs. Beside vitfast's backends, the peers flex (FlexAttention) and timm
    (timm's WindowAttention) start from the same qkv map. A case that cannot run is a row that says why.

    Exit code: 0, 1 when no case ran at all, 2 on bad flags.
    """
    if shift >= window:
        raise typer.BadParameter(f"--shift must be below --window ({window}); got {shift}.")
    from vitfast.bench.window import plan

    _bench(lambda: plan(batch=batch_size, stages=_csv(stages, "--stages"), window=window, shift=shift,
                        dtype=dtype.value, backends=_csv(backends, "--backends"), modes=_csv(modes, "--modes"),
                        device=device, warmup=warmup, rep=rep),
           quiet, tf32=tf32, json_path=json_path, plot_path=plot_path)


@bench_app.command("clip-loss")
def bench_clip_loss(
    batch_sizes: str | None = typer.Option(
        None, "--batch-sizes", show_default=False,
        help="Comma-separated batch sizes N. Default: 4096,8192,16384,32768,65536 on CUDA, 256,1024,4096 on CPU."),
    dim: int = typer.Option(512, "--dim", callback=_AT_LEAST_1, help="Embedding dim D (triton: a multiple of 16)."),
    dtype: _Dtype = _BENCH_DTYPE,
    backends: str = typer.Option(
        "triton,chunked,eager", "--backends",
        help="Comma-separated: triton, chunked, eager (the N×N logits), open_clip (open_clip's ClipLoss in the "
             "sweep's dtype), open_clip-amp (ClipLoss on float32 features under 16-bit autocast, as open_clip "
             "trains)."),
    mode: _KernelMode = typer.Option("both", "--mode", help="fwd (the loss only), fwd+bwd, or both."),
    device: str = _BENCH_DEVICE,
    warmup: int | None = _BENCH_WARMUP,
    rep: int | None = _BENCH_REP,
    max_batch: bool = typer.Option(
        False, "--max-batch",
        help="Also find each backend's largest batch (per mode) that fits in memory: doubling N from the smallest "
             "--batch-sizes, then bisecting to within 5%."),
    memory_limit: str | None = typer.Option(
        None, "--memory-limit", show_default=False,
        help="With --max-batch: a batch fits when one call's footprint is at most this (e.g. 2GiB); needed on "
             "CPU. Default on CUDA: until the GPU runs out of memory."),
    max_batch_cap: int = typer.Option(2**22, "--max-batch-cap", callback=_AT_LEAST_1,
                                      help="With --max-batch: the largest N tried."),
    json_path: Path | None = _BENCH_JSON,
    csv_path: Path | None = typer.Option(None, "--csv", help="Also write the sweep's rows as CSV here."),
    plot_path: Path | None = _BENCH_PLOT,
    tf32: bool = _TF32,
    quiet: bool = _QUIET,
) -> None:
    """Time, TFLOP/s and peak memory of each CLIP-loss backend across batch sizes; with --max-batch, the
    largest batch each one fits.

    Inputs are random L2-normalized (N, D) embeddings and a logit scale of 100. Peak memory is what
    one call allocates above its inputs; the largest-batch footprint also counts the inputs. A case
    that cannot run (Triton without CUDA, out of memory) is a row that says why.

    Exit code: 0, 1 when no case of the sweep ran at all, 2 on bad flags.
    """
    from vitfast.bench.clip_loss import max_batch_json, max_batches, plan
    from vitfast.bench.report import max_batch_table
    from vitfast.files import parse_size

    def search(sweep: KernelSweep, err: Console) -> tuple[list[Table], dict]:
        log = None if quiet else lambda backend, mode, t: err.print(
            f"largest batch, {backend} {mode}: N={t.batch} {t.status}"
            + ("" if t.peak_mem_bytes is None else f" ({t.peak_mem_bytes / 2**20:.4g} MiB)"))
        results = max_batches(sweep, max_batch_cap, on_try=log)
        return [max_batch_table(results, sweep.shape, sweep.recorded["memory_limit"])], max_batch_json(results)

    # The size is read first, so that a bad --memory-limit is the error named.
    _bench(lambda: plan(memory_limit=None if memory_limit is None else parse_size(memory_limit),
                        batch_sizes=None if batch_sizes is None else _csv_ints(batch_sizes, "--batch-sizes"),
                        dim=dim, dtype=dtype.value, backends=_csv(backends, "--backends"),
                        modes=_modes(mode, KERNEL_MODES), device=device, warmup=warmup, rep=rep, max_batch=max_batch,
                        max_batch_cap=max_batch_cap),
           quiet, tf32=tf32, json_path=json_path, csv_path=csv_path, plot_path=plot_path,
           after=search if max_batch else None)


@bench_app.command("siglip-loss")
def bench_siglip_loss(
    batch_sizes: str | None = typer.Option(
        None, "--batch-sizes", show_default=False,
        help="Comma-separated batch sizes N. Default: 4096,8192,16384,32768,65536 on CUDA, 256,1024,4096 on CPU."),
    dim: int = typer.Option(512, "--dim", callback=_AT_LEAST_1,
                            help="Embedding dim D (triton: a multiple of 16; SigLIP ViT-B/16: 768)."),
    dtype: _Dtype = _BENCH_DTYPE,
    backends: str = typer.Option(
        "triton,chunked,eager", "--backends",
        help="Comma-separated: triton, chunked, eager (the N×N logits), open_clip (open_clip's SigLipLoss in the "
             "sweep's dtype)."),
    mode: _KernelMode = typer.Option("both", "--mode", help="fwd (the loss only), fwd+bwd, or both."),
    device: str = _BENCH_DEVICE,
    warmup: int | None = _BENCH_WARMUP,
    rep: int | None = _BENCH_REP,
    max_batch: bool = typer.Option(
        False, "--max-batch",
        help="Also find each backend's largest batch (per mode) that fits in memory: doubling N from the smallest "
             "--batch-sizes, then bisecting to within 5%."),
    memory_limit: str | None = typer.Option(
        None, "--memory-limit", show_default=False,
        help="With --max-batch: a batch fits when one call's footprint is at most this (e.g. 2GiB); needed on "
             "CPU. Default on CUDA: until the GPU runs out of memory."),
    max_batch_cap: int = typer.Option(2**22, "--max-batch-cap", callback=_AT_LEAST_1,
                                      help="With --max-batch: the largest N tried."),
    json_path: Path | None = _BENCH_JSON,
    csv_path: Path | None = typer.Option(None, "--csv", help="Also write the sweep's rows as CSV here."),
    plot_path: Path | None = _BENCH_PLOT,
    tf32: bool = _TF32,
    quiet: bool = _QUIET,
) -> None:
    """Time, TFLOP/s and peak memory of each SigLIP-loss (sigmoid loss) backend across batch sizes; with
    --max-batch, the largest batch each one fits.

    Inputs are random L2-normalized (N, D) embeddings, a logit scale of 10 and a bias of -10 (SigLIP's
    initial values). TFLOP/s count 2·N²·D forward, 10·N²·D forward and backward. Peak memory is what
    one call allocates above its inputs; the largest-batch footprint also counts the inputs. A case
    that cannot run (Triton without CUDA, out of memory) is a row that says why.

    Exit code: 0, 1 when no case of the sweep ran at all, 2 on bad flags.
    """
    from vitfast.bench.report import max_batch_table
    from vitfast.bench.siglip_loss import max_batch_json, max_batches, plan
    from vitfast.files import parse_size

    def search(sweep: KernelSweep, err: Console) -> tuple[list[Table], dict]:
        log = None if quiet else lambda backend, mode, t: err.print(
            f"largest batch, {backend} {mode}: N={t.batch} {t.status}"
            + ("" if t.peak_mem_bytes is None else f" ({t.peak_mem_bytes / 2**20:.4g} MiB)"))
        results = max_batches(sweep, max_batch_cap, on_try=log)
        return [max_batch_table(results, sweep.shape, sweep.recorded["memory_limit"])], max_batch_json(results)

    # The size is read first, so that a bad --memory-limit is the error named.
    _bench(lambda: plan(memory_limit=None if memory_limit is None else parse_size(memory_limit),
                        batch_sizes=None if batch_sizes is None else _csv_ints(batch_sizes, "--batch-sizes"),
                        dim=dim, dtype=dtype.value, backends=_csv(backends, "--backends"),
                        modes=_modes(mode, KERNEL_MODES), device=device, warmup=warmup, rep=rep, max_batch=max_batch,
                        max_batch_cap=max_batch_cap),
           quiet, tf32=tf32, json_path=json_path, csv_path=csv_path, plot_path=plot_path,
           after=search if max_batch else None)


@bench_app.command("model")
def bench_model_command(
    model: str = typer.Option("vit_base_patch16_224", "--model", "-m", help="A vitfast model name (ViT, Swin, CLIP)."),
    mode: _ModelMode = typer.Option("both", "--mode", help="train, infer, or both."),
    batch_size: int | None = typer.Option(None, "--batch-size", "-b", show_default=False, callback=_AT_LEAST_1,
                                          help="Default: 256 on CUDA (timm's benchmark), 8 on CPU."),
    img_size: int | None = typer.Option(None, "--img-size", callback=_AT_LEAST_1,
                                        help="Default: the model's; a multiple of its patch size."),
    amp_dtype: _Dtype = _AMP_DTYPE,
    attn_backend: str = typer.Option("triton,sdpa,eager", "--attn-backend",
                                     help="Comma-separated vitfast attention backends: triton, sdpa, eager."),
    compare: str | None = typer.Option(None, "--compare", help="Also time the same architecture in timm (ViT, "
                                       "Swin) or open_clip (CLIP), comma-separated."),
    accelerate: bool = typer.Option(False, "--accelerate", help="Also time the --compare library's own model "
                                    "patched by vitfast.accelerate (the Triton kernels in place: needs CUDA)."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile each model."),
    retry: bool = typer.Option(True, "--retry/--no-retry", help="On out of memory, halve the batch and retry."),
    device: str = _BENCH_DEVICE,
    warmup: int | None = _BENCH_WARMUP,
    rep: int | None = _BENCH_REP,
    json_path: Path | None = _BENCH_JSON,
    plot_path: Path | None = typer.Option(None, "--plot", help="Also save a PNG of samples/s against peak memory."),
    tf32: bool = _TF32,
    quiet: bool = _QUIET,
) -> None:
    """Samples/s, step time, peak memory, parameters and GFLOPs of a whole model per attention backend.

    A train step is forward, loss, backward and an SGD step; an infer step a forward under
    inference_mode. GFLOPs are counted from the config. A case that cannot run (Triton without CUDA,
    out of memory at batch 1) is a row that says why.

    Exit code: 0, 1 when no case ran at all, 2 on bad flags.
    """
    from vitfast.bench.model import plan

    _bench(lambda: plan(name=model, modes=_modes(mode, MODEL_MODES), backends=_csv(attn_backend, "--attn-backend"),
                        batch=batch_size, img_size=img_size, amp_dtype=amp_dtype.value,
                        compare=[] if compare is None else _csv(compare, "--compare"), compile=compile,
                        retry_smaller=retry, device=device, warmup=warmup, rep=rep, accelerate=accelerate),
           quiet, tf32=tf32, json_path=json_path, plot_path=plot_path)


@bench_app.command("all")
def bench_all_command(
    output: Path = typer.Option(..., "--output", "-o", help="Folder for each sweep's JSON and PNG and the summary."),
    quick: bool = typer.Option(False, "--quick", help="Small shapes that finish on a CPU in a few minutes."),
    dtype: _Dtype = _BENCH_DTYPE,
    device: str = _BENCH_DEVICE,
    tf32: bool = _TF32,
    quiet: bool = _QUIET,
) -> None:
    """Every sweep (attention, window attention, CLIP loss, models against timm/open_clip) with its JSON,
    a PNG of speed against memory each, and a summary table (summary.md).

    Exit code: 0, 1 when no case ran at all, 2 on bad flags.
    """
    from rich.console import Console

    from vitfast.bench import suite
    from vitfast.bench.harness import device_label, environment_info
    from vitfast.bench.report import summary_table
    from vitfast.runtime import resolve_device

    err = _stderr()
    _kernel_setup(tf32, quiet)
    with _bad_flags():
        dev = resolve_device(device)
        sweeps = suite.plan(dev, quick, dtype.value)
    env = environment_info(dev)
    with _progress(err, quiet) as progress, _write_errors():
        task = progress.add_task("bench all", total=sum(s.cases for s in sweeps))
        lines = suite.run_all(output, sweeps, env=env, quick=quick,
                              on_sweep=None if quiet else lambda sweep: progress.console.print(f"{sweep.title} ..."),
                              on_row=lambda sweep, row: progress.update(task, advance=1, description=sweep.name))
    Console(highlight=False).print(summary_table(lines, f"vitfast bench all{' --quick' if quick else ''} · "
                                                       f"{device_label(dev, env)}"))
    if not quiet:
        err.print(f"wrote {len(sweeps)} JSON and PNG files, summary.md and summary.json to {output}")
    _exit_if_none_ran(line.status for line in lines)


def _bench(plan: Callable[[], KernelSweep | ModelSweep], quiet: bool, *, tf32: bool, json_path: Path | None,
           plot_path: Path | None, csv_path: Path | None = None,
           after: Callable[[KernelSweep, Console], tuple[list[Table], dict]] | None = None) -> None:
    """Settle the sweep with `plan` (a ValueError is a bad flag), run it after a log line and under a progress bar
    (both on stderr, neither with --quiet), run `after` (more tables, and entries for the JSON), print the
    tables, then write each output asked for."""
    from rich.console import Console

    from vitfast.bench.harness import device_label, environment_info
    from vitfast.bench.report import write_csv, write_json

    err = _stderr()
    _kernel_setup(tf32, quiet)
    with _bad_flags():
        sweep = plan()
    env = environment_info(sweep.device)
    where = device_label(sweep.device, env)
    if not quiet:
        err.print(sweep.log_line(where))
    with _progress(err, quiet) as progress:
        task = progress.add_task(sweep.label, total=sweep.cases)
        rows = sweep.run(lambda row: progress.update(task, advance=1, description=sweep.describe(row)))
    tables, extra = after(sweep, err) if after is not None else ([], None)
    out = Console(highlight=False)
    for table in (sweep.table(rows, where), *tables):
        out.print(table)
    outputs = [(path, write) for path, write in [
        (json_path, lambda path: write_json(path, rows, sweep, env, extra)),
        (csv_path, lambda path: write_csv(path, rows)),
        (plot_path, lambda path: sweep.plot(rows, path, sweep.plot_title(where)))] if path is not None]
    with _write_errors():
        for path, write in outputs:
            write(path)
    if not quiet:
        for path, _ in outputs:
            err.print(f"wrote {path}")
    _exit_if_none_ran(row.status for row in rows)


def _progress(err: Console, quiet: bool) -> Progress:
    """A progress bar on stderr, shown only on a terminal and without --quiet."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err, transient=True, disable=quiet or not err.is_terminal)


@contextlib.contextmanager
def _bad_flags() -> Iterator[None]:
    """The library's ValueError for a flag's value: a one-line error and exit code 2, before anything runs."""
    try:
        yield
    except ValueError as exc:
        raise _fail(str(exc)) from None


@contextlib.contextmanager
def _write_errors() -> Iterator[None]:
    """A result file that cannot be written: a one-line error and exit code 1."""
    try:
        yield
    except OSError as exc:
        raise _fail(f"cannot write {exc.filename}: {exc.strerror}.", 1) from None


def _exit_if_none_ran(statuses: Iterable[str]) -> None:
    if "ok" not in statuses:
        raise _fail("no case ran; the status column says why.", 1)


def _modes(mode: enum.Enum, names: tuple[str, ...]) -> list[str]:
    """--mode: one of `names`, or "both" for all of them."""
    return list(names) if mode.value == "both" else [mode.value]


def _csv(text: str, flag: str) -> list[str]:
    items = list(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    if not items:
        raise ValueError(f"{flag} needs a comma-separated list; got {text!r}.")
    return items


def _csv_ints(text: str, flag: str) -> list[int]:
    try:
        return [int(s) for s in _csv(text, flag)]
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated integers like 197,257,577; got {text!r}.") from None


def _fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-line error on stderr; the caller raises the returned Exit."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(code)
