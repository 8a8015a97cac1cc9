"""AWS API calls for ``p8 emr``: validated, sent or printed, and their errors in one line.

The region follows botocore's one rule: ``--region``, else ``$AWS_DEFAULT_REGION``, else the
profile's ``region`` (``~/.aws/config``). ``$AWS_ENDPOINT_URL`` points every client at another
server (moto in the tests), as botocore does by itself.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from p8lib.errors import P8Error, UsageError

NO_REGION = "no AWS region: pass --region or set AWS_DEFAULT_REGION (or a region in your profile)"


def validate(service: str, operation: str, params: dict[str, Any]) -> None:
    """Raise UsageError unless ``params`` is a valid ``operation`` request for ``service``.

    Uses botocore's parameter validator and the service model shipped with botocore: offline.
    """
    import botocore.session
    from botocore.validate import ParamValidator

    model = botocore.session.get_session().get_service_model(service)
    operation_model = model.operation_model(operation)
    report = ParamValidator().validate(params, operation_model.input_shape)
    if report.has_errors():
        raise UsageError(f"invalid {service} {operation} request: {report.generate_report()}")


def check_bucket_name(bucket: str) -> None:
    """Refuse (exit 2) a name S3's general-purpose bucket naming rules refuse.

    Examples
    --------
    >>> check_bucket_name("fruits-p8.data")
    >>> check_bucket_name("Fruits_Moto")
    Traceback (most recent call last):
    ...
    p8lib.errors.UsageError: --bucket 'Fruits_Moto' is not a valid S3 bucket name: 3-63 \
lowercase letters, digits, '-' and '.', starting and ending with a letter or digit
    """
    rule = "3-63 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
    if bucket.startswith(("s3:", "s3a:")) or "/" in bucket:
        raise UsageError(f"--bucket takes a bucket name (no s3://, no /), got {bucket!r}")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        raise UsageError(f"--bucket {bucket!r} is not a valid S3 bucket name: {rule}")
    if ".." in bucket or ".-" in bucket or "-." in bucket:
        raise UsageError(f"--bucket {bucket!r}: no two adjacent periods, no '.' next to '-'")
    try:
        ipaddress.IPv4Address(bucket)
    except ValueError:
        pass
    else:
        raise UsageError(f"--bucket {bucket!r} looks like an IP address, which S3 refuses")
    reserved = ("xn--", "sthree-", "amzn-s3-demo-")
    suffixes = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
    if bucket.startswith(reserved) or bucket.endswith(suffixes):
        raise UsageError(f"--bucket {bucket!r} uses a prefix or suffix S3 reserves")


@dataclass
class Aws:
    """Validates, then sends (or, with ``dry_run``, prints) AWS API requests.

    ``clients`` may hold ready boto3 clients by service name (tests pass stubbed ones).
    """

    region: str | None = None
    dry_run: bool = False
    clients: dict[str, Any] = field(default_factory=dict)
    out: Callable[[str], None] = print
    sent: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def client(self, service: str) -> Any:
        if service not in self.clients:
            import boto3

            self.clients[service] = boto3.client(service, region_name=self.region)
        return self.clients[service]

    def region_name(self) -> str | None:
        """The region requests go to: ``--region``, else botocore's (environment, profile)."""
        if self.region:
            return self.region
        import boto3

        return boto3.session.Session().region_name

    def call(
        self, service: str, operation: str, params: dict[str, Any], *, shown: Any = None
    ) -> Any:
        """``operation`` (API name, e.g. ``RunJobFlow``) with ``params``; the response or None."""
        validate(service, operation, params)
        self.sent.append((service, operation, params))
        if self.dry_run:
            request = {"service": service, "operation": operation, "params": shown or params}
            self.out(json.dumps(request, indent=2, default=str))
            return None
        method = "".join("_" + c.lower() if c.isupper() else c for c in operation).lstrip("_")
        try:
            return getattr(self.client(service), method)(**params)
        except Exception as exc:
            raise P8Error(explain(exc, service, operation)) from exc


def error_code(exc: BaseException | None) -> str | None:
    """The AWS error code of a failed call (``404``, ``NoSuchKey``, …), or None."""
    from botocore.exceptions import ClientError

    cause = exc.__cause__ if isinstance(exc, P8Error) else exc
    if isinstance(cause, ClientError):
        return str(cause.response.get("Error", {}).get("Code"))
    return None


def explain(exc: Exception, service: str, operation: str) -> str:
    """One line for a failed call: what went wrong and what to do, never a page of HTML."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
    )

    what = f"{service} {operation}"
    if isinstance(exc, NoCredentialsError):
        return "no AWS credentials: run `aws configure` or set AWS_PROFILE / AWS_ACCESS_KEY_ID"
    if isinstance(exc, NoRegionError):
        return NO_REGION
    if isinstance(exc, EndpointConnectionError):
        return f"{what}: cannot reach {exc.kwargs.get('endpoint_url')}"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code, message = str(error.get("Code")), str(error.get("Message") or "")
        if code in ("403", "AccessDenied", "Forbidden"):
            return f"{what}: access denied (403): your credentials may not do this here"
        if message.lstrip().startswith("<"):  # an HTML page: the endpoint is not speaking AWS
            return f"{what}: HTTP {status} from the endpoint, not an AWS answer"
        return f"{what}: {code}: {message}"
    return f"{what}: {type(exc).__name__}: {exc}"
