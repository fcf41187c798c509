"""``/docs``: the OpenAPI document rendered as one self-contained HTML page.

Rendered on the server from the same document as ``/openapi.json``: no
JavaScript, no CDN, so it works on a machine without internet access.
"""

from __future__ import annotations

from html import escape

_CSS = """
body{font:15px/1.5 -apple-system,"PingFang SC","Microsoft YaHei",sans-serif;margin:0;color:#1f2328}
header{background:#0b5;color:#fff;padding:16px 32px}header h1{margin:0;font-size:22px}
header a{color:#fff}main{padding:8px 32px 48px;max-width:1100px}
nav ul{columns:2;padding-left:18px}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:36px}
.op{border:1px solid #d0d7de;border-radius:6px;margin:14px 0;padding:10px 14px}
.op h3{margin:0;font-size:16px;font-family:ui-monospace,Menlo,monospace;word-break:break-all}
.m{display:inline-block;min-width:58px;text-align:center;border-radius:4px;color:#fff;padding:1px 6px;
margin-right:8px;font-size:13px}.GET{background:#1f6feb}.POST{background:#1a7f37}.PATCH{background:#9a6700}
.DELETE{background:#cf222e}.PUT{background:#8250df}.sum{color:#57606a;margin:4px 0}
.desc{white-space:pre-wrap}.access{font-size:13px;margin:6px 0}.tag{display:inline-block;background:#eef;
border-radius:10px;padding:0 8px;margin-right:4px}.public{background:#dfd}
table{border-collapse:collapse;margin:6px 0 10px;width:100%;font-size:14px}
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}th{background:#f6f8fa}
code{font-family:ui-monospace,Menlo,monospace;font-size:13px}td.d{white-space:pre-wrap}
.small{color:#57606a;font-size:13px}
"""


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _anchor(name: str) -> str:
    return "schema-" + name.replace(".", "-")


def _type(schema: dict) -> str:
    """A short, linked, human-readable type of a schema."""
    if "$ref" in schema:
        name = _ref_name(schema["$ref"])
        return f'<a href="#{_anchor(name)}">{escape(name.rsplit(".", 1)[-1])}</a>'
    if "anyOf" in schema and "type" not in schema:  # a nullable reference
        return " or ".join(_type(s) for s in schema["anyOf"])
    t = schema.get("type")
    if isinstance(t, list):
        return " or ".join(_type({**schema, "type": x}) for x in t)
    if t == "array":
        return "array of " + _type(schema.get("items", {}))
    if t == "object" and isinstance(schema.get("additionalProperties"), dict):
        return "map of string to " + _type(schema["additionalProperties"])
    if t is None:
        return "any"
    fmt = schema.get("format")
    return escape(t + (f" ({fmt})" if fmt else ""))


def _access(access: dict) -> str:
    if access.get("public"):
        return '<span class="tag public">public: no token</span>'
    tags = []
    if access.get("member"):
        tags.append("member")
    if access.get("staff_roles"):
        tags.append("staff: " + ", ".join(access["staff_roles"]))
    if access.get("service"):
        tags.append("service")
    if not tags:
        tags.append("nobody")
    return "".join(f'<span class="tag">{escape(t)}</span>' for t in tags)


def _fields_table(schema: dict) -> str:
    props = schema.get("properties") or {}
    if not props:
        return ""
    required = set(schema.get("required", []))
    rows = []
    for name, prop in props.items():
        flags = [
            label
            for key, label in (("readOnly", "output only"), ("writeOnly", "input only"), ("x-immutable", "immutable"))
            if prop.get(key)
        ]
        if name in required:
            flags.insert(0, "required")
        rows.append(
            f"<tr><td><code>{escape(name)}</code></td><td>{_type(prop)}</td>"
            f"<td>{escape(', '.join(flags))}</td><td class=d>{escape(prop.get('description', ''))}</td></tr>"
        )
    return (
        "<table><tr><th>Field</th><th>Type</th><th></th><th>Description</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _parameters(params: list[dict]) -> str:
    if not params:
        return ""
    rows = "".join(
        f"<tr><td><code>{escape(p['name'])}</code></td><td>{escape(p['in'])}</td>"
        f"<td>{_type(p.get('schema', {}))}</td><td>{'yes' if p.get('required') else ''}</td>"
        f"<td class=d>{escape(p.get('description', ''))}</td></tr>"
        for p in params
    )
    return (
        "<table><tr><th>Parameter</th><th>In</th><th>Type</th><th>Required</th><th>Description</th></tr>"
        + rows
        + "</table>"
    )


def _body(schema: dict, schemas: dict) -> str:
    if "$ref" in schema:
        target = schemas.get(_ref_name(schema["$ref"]), {})
        return f"<p><b>Body</b>: {_type(schema)}</p>" + _fields_table(target)
    return f"<p><b>Body</b>: {_type(schema)}</p>" + _fields_table(schema)


def render_docs(doc: dict) -> str:
    """The HTML page of an OpenAPI document built by :func:`gateway.openapi.build_openapi`."""
    schemas = doc.get("components", {}).get("schemas", {})
    by_tag: dict[str, list[tuple[str, str, dict]]] = {}
    for path, item in doc.get("paths", {}).items():
        for method, op in item.items():
            for tag in op.get("tags", ["API"]):
                by_tag.setdefault(tag, []).append((path, method.upper(), op))
    tag_docs = {t["name"]: t.get("description", "") for t in doc.get("tags", [])}

    out = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(doc['info']['title'])}</title><style>{_CSS}</style></head><body>",
        f"<header><h1>{escape(doc['info']['title'])} <small>{escape(doc['info']['version'])}</small></h1>",
        '<span class="small" style="color:#fff">Generated from the protos · '
        '<a href="/openapi.json">openapi.json</a></span></header><main>',
        f"<p class=desc>{escape(doc['info'].get('description', ''))}</p><nav><ul>",
    ]
    for ops in by_tag.values():
        for path, method, op in ops:
            out.append(
                f'<li><a href="#op-{escape(op["operationId"])}">{escape(op["operationId"])}</a> '
                f"<span class=small>{method} {escape(path)}</span></li>"
            )
    out.append("</ul></nav>")
    for tag, ops in by_tag.items():
        out.append(f"<h2>{escape(tag)}</h2><p class=desc>{escape(tag_docs.get(tag, ''))}</p>")
        for path, method, op in ops:
            out.append(f'<section class=op id="op-{escape(op["operationId"])}">')
            out.append(f'<h3><span class="m {method}">{method}</span>{escape(path)}</h3>')
            out.append(f"<p class=sum><b>{escape(op['operationId'])}</b> · {escape(op.get('summary', ''))}</p>")
            out.append(f"<div class=access>Who may call: {_access(op.get('x-mall-access', {}))}</div>")
            if op.get("description"):
                out.append(f"<p class=desc>{escape(op['description'])}</p>")
            out.append(_parameters(op.get("parameters", [])))
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            if body:
                out.append(_body(body["schema"], schemas))
            content = op["responses"]["200"]["content"]
            shown = _type(content["application/json"]["schema"]) if "application/json" in content else \
                " or ".join(f"<code>{escape(t)}</code>" for t in content)  # a CSV export
            out.append(f"<p><b>Response</b>: {shown} · errors: "
                       f'<a href="#{_anchor("Error")}">Error</a></p></section>')
    out.append("<h2>Schemas</h2>")
    for name, schema in schemas.items():
        out.append(f'<section class=op id="{_anchor(name)}"><h3>{escape(name)}</h3>')
        if schema.get("description"):
            out.append(f"<p class=desc>{escape(schema['description'])}</p>")
        if "enum" in schema:
            out.append("<p>One of: " + ", ".join(f"<code>{escape(v)}</code>" for v in schema["enum"]) + "</p>")
        out.append(_fields_table(schema))
        if name == "Error":
            out.append(_fields_table(schema["properties"]["error"]))
        out.append("</section>")
    out.append("</main></body></html>")
    return "".join(out)
