"""The `p8` command: parse arguments, make one call into the library, report in one line."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from p8lib import __version__
from p8lib.config import MODES
from p8lib.errors import P8Error

PROG = "p8"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message} (see `{self.prog} --help`)\n")


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _positive_int(text: str) -> int:
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


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = _Parser(prog=PROG, description="Fruits! image features on Spark: local or EMR.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--verbose", action="store_true", help="Spark warnings and full stack traces"
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="featurize images, fit scaler + PCA, write parquet")
    run.add_argument("--images", required=True, help="folder or URI of the images (recursive)")
    run.add_argument("--output", required=True, help="folder or URI for the results")
    group = run.add_mutually_exclusive_group()
    group.add_argument("--k", type=_positive_int, help="number of PCA components")
    group.add_argument(
        "--variance",
        type=_fraction,
        default=0.99,
        help="choose the smallest k reaching this explained variance (default 0.99)",
    )
    run.add_argument("--glob", default="*.jpg", help="file name pattern (default *.jpg)")
    run.add_argument("--master", default="local[*]", help="Spark master URL (default local[*])")
    run.add_argument(
        "--weights", default="imagenet", help="'imagenet' (Keras cache) or a .h5/.keras file"
    )
    run.add_argument("--image-size", type=_positive_int, default=224, help="network input size")
    run.add_argument("--batch-size", type=_positive_int, default=64, help="images per forward pass")
    run.add_argument(
        "--mode", choices=MODES, default="error", help="when the output exists (default: error)"
    )
    run.add_argument("--s3-endpoint", help="S3 endpoint URL off EMR (or $AWS_ENDPOINT_URL)")
    run.add_argument(
        "--conf", type=_conf, action="append", default=[], metavar="KEY=VALUE", help="Spark conf"
    )

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
    return parser


def _cmd_upload(args: argparse.Namespace) -> int:
    from p8lib.s3 import upload

    result = upload(args.source, args.dest, endpoint=args.s3_endpoint, log=_say)
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


def _cmd_run(args: argparse.Namespace) -> int:
    from p8lib.pipeline import run

    result = run(
        images=args.images,
        output=args.output,
        k=args.k,
        variance=args.variance,
        glob=args.glob,
        master=args.master,
        weights=args.weights,
        image_size=args.image_size,
        batch_size=args.batch_size,
        mode=args.mode,
        s3_endpoint=args.s3_endpoint or os.environ.get("AWS_ENDPOINT_URL"),
        spark_conf=dict(args.conf),
        log=_say,
        verbose=args.verbose,
    )
    print(result.summary())
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from p8lib.sample import materialize

    paths = materialize(dest=args.dest, source=args.source)
    labels = {p.parent.name for p in paths}
    print(f"{len(paths)} images in {len(labels)} classes under {args.dest}")
    return 0


COMMANDS = {
    "run": _cmd_run,
    "sample": _cmd_sample,
    "upload": _cmd_upload,
    "jars": _cmd_jars,
    "notebook": _cmd_notebook,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `p8`; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except P8Error as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.verbose:
            traceback.print_exc()
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(
            f"{PROG}: error: {type(exc).__name__}: {message} (--verbose for details)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
