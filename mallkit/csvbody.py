"""CSV exports of reports: a ``google.api.HttpBody`` the gateway answers as is (UTF-8, a header row,
CRLF line ends as RFC 4180 has them)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence

from google.api import httpbody_pb2

CSV_CONTENT_TYPE = "text/csv; charset=utf-8"


def csv_body(header: Sequence[str], rows: Iterable[Sequence[object]]) -> httpbody_pb2.HttpBody:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(header)
    w.writerows(rows)
    return httpbody_pb2.HttpBody(content_type=CSV_CONTENT_TYPE, data=buf.getvalue().encode("utf-8"))
