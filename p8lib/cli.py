"""The `p8` command: parse arguments, make one call into the library, report in one line."""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from p8lib import __version__
from p8lib.config import MODES, SparkSettings
from p8lib.engine import ENGINES, PRECISIONS
from p8lib.errors import P8Error, UsageError, first_line
from p8lib.listing import IMAGE_EXTENSIONS
from p8lib.predict import UNSURE_BELOW

PROG = "p8"
S = TypeVar("S", bound=SparkSettings)
D = TypeVar("D")


class _Help(argparse.HelpFormatter):
    """Help that shows each option's default (unless it has none, or says it already)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or default in (None, False, [], argparse.SUPPRESS) or not text:
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (exit code 2), shows defaults in help,
    takes ``--verbose`` after the subcommand too, and options only as spelled (no prefixes:
    a script's `--out` would change meaning the day another option starts with it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Help)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        if kwargs.get("prog", "").count(" ") >= 1 and kwargs.get("add_help", True):
            self.add_argument(
                "--verbose",
                action="store_true",
                default=argparse.SUPPRESS,
                help="Spark warnings and full stack traces",
            )

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message} (see `{self.prog} --help`)\n")


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def _fraction(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _conf(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _pca_options(p: argparse.ArgumentParser) -> None:
    """The options of :class:`p8lib.config.PcaSettings`."""
    group = p.add_argument_group("PCA").add_mutually_exclusive_group()
    group.add_argument("--k", type=_whole_number, help="number of PCA components")
    group.add_argument(
        "--variance",
        type=_fraction,
        default=0.99,
        help="choose the smallest k reaching this explained variance (default 0.99)",
    )


def _spark_options(p: argparse.ArgumentParser) -> None:
    """The options of :class:`p8lib.config.SparkSettings` (``--conf`` fills spark_conf)."""
    group = p.add_argument_group("Spark and S3")
    group.add_argument("--master", default="local[*]", help="Spark master URL (default local[*])")
    group.add_argument("--s3-endpoint", help="S3 endpoint URL off EMR (or $AWS_ENDPOINT_URL)")
    group.add_argument(
        "--conf", type=_conf, action="append", default=[], metavar="KEY=VALUE", help="Spark conf"
    )


def _quiet_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quiet", action="store_true", help="only the summary and errors, no progress lines"
    )


def _reporting(args: argparse.Namespace) -> dict[str, Any]:
    """Where stage and progress lines go: stderr, redrawn in place in a terminal; none with
    --quiet."""
    from p8lib.progress import is_terminal

    if args.quiet:
        return {"log": None, "live": False}
    return {"log": _say, "live": is_terminal()}


def _types(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _emr_parser(sub: argparse._SubParsersAction) -> None:
    emr = sub.add_parser("emr", help="Amazon EMR: package, up, submit, status, down, cost")
    actions = emr.add_subparsers(dest="action", required=True, parser_class=_Parser)

    def aws_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--region", help="AWS region (default: $AWS_DEFAULT_REGION, else your profile's)"
        )
        p.add_argument(
            "--dry-run", action="store_true", help="print the validated requests, send nothing"
        )

    def cluster_id(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--cluster-id",
            default=os.environ.get("P8_CLUSTER_ID"),
            help="j-... (default: $P8_CLUSTER_ID, which `p8 emr up` prints)",
        )

    package = actions.add_parser("package", help="upload wheel, bootstrap.sh, notebooks to S3")
    package.add_argument("--bucket", required=True, help="bucket name (made private, encrypted)")
    package.add_argument(
        "--wheel", type=Path, help="the p8lib wheel to upload (default: built from this checkout)"
    )
    aws_options(package)

    _emr_up_parser(actions, aws_options)

    submit = actions.add_parser("submit", help="add a step: p8 run/train under spark-submit")
    cluster_id(submit)
    submit.add_argument("--bucket", required=True, help="the bucket `p8 emr package` filled")
    submit.add_argument("p8_args", nargs=argparse.REMAINDER, help="-- run --images s3://... ...")
    aws_options(submit)

    for name, text in [("status", "the cluster's and its steps' states"), ("down", "terminate")]:
        action = actions.add_parser(name, help=text)
        cluster_id(action)
        aws_options(action)

    cost = actions.add_parser("cost", help="estimated cost of a run (price table inside)")
    cost.add_argument("--master-type", default="m5.xlarge")
    cost.add_argument("--core-type", default="m5.xlarge")
    cost.add_argument("--core-count", type=_whole_number, default=2)
    cost.add_argument("--task-count", type=_whole_number, default=0)
    cost.add_argument("--on-demand", action="store_true", help="workers on demand, not spot")
    group = cost.add_mutually_exclusive_group(required=True)
    group.add_argument("--hours", type=_fraction, help="hours the cluster runs")
    group.add_argument("--images", type=_whole_number, help="images to featurize")


def _emr_up_parser(
    actions: argparse._SubParsersAction,
    aws_options: Callable[[argparse.ArgumentParser], None],
) -> None:
    up = actions.add_parser("up", help="create the cluster from emr_config/cluster.json")
    up.add_argument("--bucket", required=True, help="the bucket `p8 emr package` filled")
    up.add_argument(
        "--config", default=None, help="RunJobFlow JSON (default emr_config/cluster.json)"
    )
    up.add_argument("--name", help="cluster name")
    up.add_argument("--release", help="EMR release label, e.g. emr-7.13.0")
    up.add_argument("--master-type", help="master instance type (on demand)")
    up.add_argument("--core-types", type=_types, help="core instance types, comma-separated")
    up.add_argument("--core-count", type=_whole_number, help="core capacity (instances)")
    up.add_argument("--task-types", type=_types, help="task instance types (default: core's)")
    up.add_argument("--task-count", type=_whole_number, default=0, help="task capacity")
    up.add_argument("--on-demand", action="store_true", help="core/task on demand, not spot")
    up.add_argument(
        "--idle-timeout",
        dest="idle_timeout_minutes",
        type=_whole_number,
        help="minutes idle before auto-termination",
    )
    up.add_argument("--subnet", help="subnet id (default: the default VPC's)")
    up.add_argument("--key-name", help="EC2 key pair, only with --ssh-cidr")
    up.add_argument("--ssh-cidr", help="open SSH to this block only, e.g. 203.0.113.7/32")
    up.add_argument("--weights", help="s3:// URI of the .h5 weights to seed Keras's cache")
    aws_options(up)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = _Parser(prog=PROG, description="Fruits! image features on Spark: local or EMR.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--verbose", action="store_true", help="Spark warnings and full stack traces"
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _run_parser(sub)
    _train_parser(sub)
    _predict_parser(sub)
    _evaluate_parser(sub)
    _emr_parser(sub)
    _tool_parsers(sub)
    return parser


def _run_parser(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="featurize images, fit scaler + PCA, write parquet")
    run.add_argument("--images", required=True, help="folder or URI of the images (recursive)")
    run.add_argument("--output", required=True, help="folder or URI for the results")
    _pca_options(run)
    run.add_argument(
        "--glob",
        help="only files whose name matches, any case, e.g. '*.png' (default: every image "
        f"file: {' '.join(IMAGE_EXTENSIONS)}, any case)",
    )
    run.add_argument(
        "--weights", default="imagenet", help="'imagenet' (Keras cache) or a .h5/.keras file"
    )
    run.add_argument("--image-size", type=_whole_number, default=224, help="network input size")
    run.add_argument(
        "--batch-size",
        type=_whole_number,
        help="images per forward pass (default: 8 with openvino, 32 with keras)",
    )
    run.add_argument(
        "--mode", choices=MODES, default="error", help="when the output exists (default: error)"
    )
    run.add_argument(
        "--engine",
        choices=ENGINES,
        default="openvino",
        help="the network's engine: openvino (default, fast on CPUs) or keras (the reference)",
    )
    run.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="openvino: fp32 (default, Keras's features), bf16 or int8 (faster, approximate)",
    )
    run.add_argument(
        "--calibration",
        help="int8: a folder or URI of images to calibrate on (default: 300 of --images)",
    )
    run.add_argument(
        "--partitions",
        type=_whole_number,
        help="featurize in exactly N tasks (default: planned from the cores the job can get)",
    )
    run.add_argument(
        "--augment",
        type=_whole_number,
        default=0,
        metavar="N",
        help="also featurize N photo-like variants of each image (fruit cut out, on backgrounds, "
        "in bins, re-lit): for training sets meant for real photos (default: 0)",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="list the input and print the plan, time and cost; featurize and write nothing",
    )
    _spark_options(run)
    _quiet_option(run)


def _train_parser(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser(
        "train", help="fit scaler + PCA + logistic regression on `p8 run` features; evaluate"
    )
    train.add_argument("--features", required=True, help="a `p8 run` output to train on")
    train.add_argument("--model", required=True, help="folder or URI for the model")
    train.add_argument(
        "--test", help="a `p8 run` output to evaluate on (default: a held-out fifth of --features)"
    )
    train.add_argument(
        "--input",
        choices=("pca", "features"),
        default="pca",
        help="PCA components (default) or all 1280 scaled features",
    )
    train.add_argument(
        "--color",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also give the regression each image's colour histogram (default: yes)",
    )
    _pca_options(train)
    train.add_argument(
        "--reg-param", type=_fraction, help="L2 strength (default: chosen on held-out images)"
    )
    train.add_argument("--max-iter", type=_whole_number, default=200, help="L-BFGS iterations")
    train.add_argument(
        "--standardization",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="scale the regression's inputs to unit variance before the penalty (default: yes; "
        "no: better on real photos, a little worse on Fruits-360, see the README)",
    )
    train.add_argument(
        "--photo-model",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="when --features holds photo-like variants (p8 run --augment): also fit the photo "
        "model for real photos, and the regression on the images alone (default: yes)",
    )
    train.add_argument(
        "--mode", choices=("error", "overwrite"), default="error", help="when the model exists"
    )
    _spark_options(train)
    _quiet_option(train)


def _predict_parser(sub: argparse._SubParsersAction) -> None:
    predict = sub.add_parser("predict", help="the top classes of photos, without Spark")
    predict.add_argument(
        "photos",
        nargs="+",
        metavar="PHOTO",
        help="image files (jpg, png, heic, ...) or folders of them (every image under each)",
    )
    predict.add_argument("--model", required=True, help="a `p8 train` model folder or s3:// URI")
    predict.add_argument("--json", action="store_true", help="one JSON object per line")
    predict.add_argument("--top", type=_whole_number, default=3, help="classes per photo")
    predict.add_argument(
        "--weights", default="imagenet", help="the weights the model's features came from"
    )
    predict.add_argument("--s3-endpoint", help="S3 endpoint URL off AWS (or $AWS_ENDPOINT_URL)")
    predict.add_argument(
        "--engine", choices=ENGINES, default="openvino", help="openvino (default) or keras"
    )
    predict.add_argument(
        "--unsure-below",
        type=_fraction,
        default=UNSURE_BELOW,
        metavar="P",
        help=f"say 'unsure' when the top probability is below P, or name only the fruit when "
        f"its classes add up to P (default {UNSURE_BELOW:g}: see the README's curves; 0 never)",
    )
    _quiet_option(predict)


def _evaluate_parser(sub: argparse._SubParsersAction) -> None:
    evaluate = sub.add_parser(
        "evaluate", help="score a model on labelled photos: top-1/top-3, fine and coarse"
    )
    evaluate.add_argument("--model", required=True, help="a `p8 train` model folder or s3:// URI")
    evaluate.add_argument(
        "--images", required=True, help="a folder of photos in one folder per class"
    )
    evaluate.add_argument(
        "--labels",
        help="labels.json: {folder: {fine: [classes], coarse: fruit}} (default: folder names)",
    )
    evaluate.add_argument(
        "--coarse-map",
        help="coarse_map.json: {class: fruit} (default: the one beside --labels, else the "
        "class's first word)",
    )
    evaluate.add_argument(
        "--output", help="a new folder for evaluation.json and confusion.png (default: none)"
    )
    evaluate.add_argument(
        "--weights", default="imagenet", help="the weights the model's features came from"
    )
    evaluate.add_argument(
        "--engine", choices=ENGINES, default="openvino", help="openvino (default) or keras"
    )
    evaluate.add_argument("--s3-endpoint", help="S3 endpoint URL off AWS (or $AWS_ENDPOINT_URL)")
    _quiet_option(evaluate)


def _tool_parsers(sub: argparse._SubParsersAction) -> None:
    """sample, upload, jars, notebook."""
    sample = sub.add_parser("sample", help="materialize the 34-image data sample")
    sample.add_argument("--dest", default="data_sample/images", help="where to put the images")
    sample.add_argument(
        "--from",
        dest="source",
        help="a Fruits-360 folder or base URL (default: $FRUITS360_DIR, else the official repo)",
    )
    upload = sub.add_parser("upload", help="copy a local image tree to s3://bucket/prefix")
    upload.add_argument("source", help="local folder")
    upload.add_argument("dest", help="s3://bucket/prefix")
    upload.add_argument("--s3-endpoint", help="S3 endpoint URL off AWS (or $AWS_ENDPOINT_URL)")
    _quiet_option(upload)

    sub.add_parser("jars", help="fetch and verify the S3A jars (hadoop-aws, AWS SDK bundle)")

    notebook = sub.add_parser("notebook", help="execute a notebook headless with papermill")
    notebook.add_argument("name", help="P8_local, P8_AWS or a path to a .ipynb")
    notebook.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("KEY", "VALUE"),
        help="a notebook parameter (images, output, k, variance, sample_size, s3_endpoint)",
    )
    notebook.add_argument("--results", default="results", help="where the executed notebook goes")


def _cmd_upload(args: argparse.Namespace) -> int:
    from p8lib.s3 import upload

    result = upload(args.source, args.dest, endpoint=args.s3_endpoint, **_reporting(args))
    print(f"uploaded {result.uploaded} files, skipped {result.skipped} already there")
    return 0


def _cmd_jars(args: argparse.Namespace) -> int:
    from p8lib.session import ensure_s3_jars

    for path in ensure_s3_jars():
        print(path)
    return 0


def _cmd_notebook(args: argparse.Namespace) -> int:
    from p8lib.notebook import parse_value, run_notebook

    parameters = {key: parse_value(value) for key, value in args.parameter}
    executed = run_notebook(args.name, parameters=parameters, results=args.results)
    print(f"executed: {executed} (figures in {executed.with_suffix('')}/)")
    return 0


def _from_args(cls: type[D], args: argparse.Namespace, **extra: Any) -> D:
    """A settings dataclass from the options named like its fields (and ``extra``)."""
    values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}  # type: ignore[arg-type]
    return cls(**values, **extra)


def _settings(cls: type[S], args: argparse.Namespace) -> S:
    """A command's typed settings from its options; ``--conf`` pairs fill spark_conf."""
    return _from_args(cls, args, spark_conf=dict(args.conf))


def _cmd_run(args: argparse.Namespace) -> int:
    from p8lib.config import RunConfig
    from p8lib.pipeline import dry_run, execute

    if args.dry_run:
        for line in dry_run(_settings(RunConfig, args)):
            print(line)
        return 0
    result = execute(_settings(RunConfig, args), verbose=args.verbose, **_reporting(args))
    print(result.summary())
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from p8lib.classify import fit
    from p8lib.config import TrainConfig

    result = fit(_settings(TrainConfig, args), verbose=args.verbose, **_reporting(args))
    print(result.summary())
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    import json

    from p8lib.predict import photo_files, predict_photos

    if not args.verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    reporting = _reporting(args)
    # The answers come batch by batch; in a terminal they scroll by between plain progress lines
    # (a redrawn line would be torn by them).
    reporting["live"] = reporting["live"] and not sys.stdout.isatty()
    answers = predict_photos(
        photo_files(args.photos),
        model=args.model,
        weights=args.weights,
        top=args.top,
        s3_endpoint=args.s3_endpoint,
        engine=args.engine,
        unsure_below=args.unsure_below,
        **reporting,
    )
    failed = total = 0
    for result in answers:
        print(json.dumps(result.as_dict()) if args.json else result.line(), flush=True)
        failed, total = failed + (result.error is not None), total + 1
    if failed:
        _say(f"{failed} of {total} photos could not be read")
        return 1
    return 0


def _cmd_emr(args: argparse.Namespace) -> int:
    from p8lib import emr

    if args.action == "cost":
        estimate = emr.cost(
            master_type=args.master_type,
            core_type=args.core_type,
            core_count=args.core_count,
            task_count=args.task_count,
            spot=not args.on_demand,
            hours=args.hours,
            images=args.images,
        )
        print("\n".join(estimate.lines))
        return 0
    aws = emr.Aws(region=args.region, dry_run=args.dry_run)
    if args.action in ("submit", "status", "down") and not args.cluster_id:
        raise UsageError("no cluster: pass --cluster-id j-... or set P8_CLUSTER_ID")
    if args.action == "package":
        for uri in emr.package(args.bucket, aws, wheel=args.wheel):
            _say(f"{'would write' if args.dry_run else 'wrote'} {uri}")
    elif args.action == "up":
        spec = _from_args(emr.ClusterSpec, args)
        config = Path(args.config) if args.config else emr.CLUSTER_JSON
        cluster = emr.up(spec, aws, config=config)
        if cluster:
            print(f"export P8_CLUSTER_ID={cluster}")
    elif args.action == "submit":
        p8_args = args.p8_args[1:] if args.p8_args[:1] == ["--"] else args.p8_args
        step = emr.submit(args.cluster_id, args.bucket, p8_args, aws)
        if step:
            print(f"step {step} added to {args.cluster_id}: `p8 emr status` follows it")
    elif args.action == "status":
        print("\n".join(emr.status(args.cluster_id, aws)))
    elif args.action == "down":
        emr.down(args.cluster_id, aws, log=_say)
        if not args.dry_run:
            print(f"terminating {args.cluster_id}")
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from p8lib.sample import materialize

    paths = materialize(dest=args.dest, source=args.source)
    labels = {p.parent.name for p in paths}
    print(f"{len(paths)} images in {len(labels)} classes under {args.dest}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from p8lib.evaluate import evaluate

    report = evaluate(
        model=args.model,
        images=args.images,
        labels=args.labels,
        coarse_map=args.coarse_map,
        output=args.output,
        weights=args.weights,
        engine=args.engine,
        s3_endpoint=args.s3_endpoint,
        **_reporting(args),
    )
    print("\n".join(report.lines()))
    return 1 if report.unreadable else 0


COMMANDS = {
    "run": _cmd_run,
    "train": _cmd_train,
    "predict": _cmd_predict,
    "evaluate": _cmd_evaluate,
    "emr": _cmd_emr,
    "sample": _cmd_sample,
    "upload": _cmd_upload,
    "jars": _cmd_jars,
    "notebook": _cmd_notebook,
}


# What Ctrl-C leaves, by command (run, train and evaluate publish nothing unfinished).
INTERRUPTED_LEAVES = {
    "run": "nothing was published",
    "train": "nothing was published",
    "evaluate": "nothing was published",
    "predict": "the answers printed are for the photos done so far",
    "upload": "the files sent so far stay; the same command sends the rest",
}


def _interrupted(command: str) -> int:
    """After Ctrl-C: wait for the cancelled tasks, stop Spark (a JVM killed with tasks still
    running prints their traces), then say so, and what is left, in one line."""
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession()
    if session is not None:
        tracker, deadline = session.sparkContext.statusTracker(), time.monotonic() + 15
        while tracker.getActiveStageIds() and time.monotonic() < deadline:
            time.sleep(0.2)
        session.stop()
    leaves = INTERRUPTED_LEAVES.get(command)
    print(f"{PROG}: interrupted" + (f", {leaves}" if leaves else ""), file=sys.stderr)
    return 130


def _reader_gone() -> bool:
    """Whether standard output is a pipe whose reading end was closed."""
    import select

    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (OSError, ValueError):
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `p8`; returns the exit code."""
    from p8lib.session import INTERRUPTED, cli_interrupts

    args = build_parser().parse_args(argv)
    args.verbose = getattr(args, "verbose", False)
    cli_interrupts()
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return _interrupted(args.command)
    except Exception as exc:
        if isinstance(exc, BrokenPipeError) and _reader_gone():
            # `p8 predict photos/ | head`: the reader has what it wanted. Stop quietly, as a
            # command killed by SIGPIPE does (128 + 13), with no second error at exit's flush.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
        if args.verbose:
            traceback.print_exc()
        if INTERRUPTED.is_set():  # the cancelled Spark job's error: not the user's problem
            return _interrupted(args.command)
        if isinstance(exc, P8Error):
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return exc.exit_code
        print(
            f"{PROG}: error: {type(exc).__name__}: {first_line(exc)} (--verbose for details)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
