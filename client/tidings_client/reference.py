"""Writes the API reference of ``docs/sdk.md`` from the SDK's own signatures and docstrings.

``python -m tidings_client.reference docs/sdk.md`` rewrites the part between the
``<!-- reference:start -->`` and ``<!-- reference:end -->`` markers; ``--check`` exits 1 when that
part is not what the code says (a test runs it)."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import sys
from pathlib import Path
from typing import Any

from tidings_client import backoff, client, e2ee, errors, media, models, push, store

START, END = "<!-- reference:start -->", "<!-- reference:end -->"

SECTIONS: list[tuple[str, list[Any]]] = [
    ("The client", [client.TidingsClient, client.EventStream, client.direct_conversation_id]),
    ("Media and push", [media.MediaApi, push.PushApi]),
    (
        "Objects",
        [
            models.Message,
            models.Media,
            models.Conversation,
            models.LastMessage,
            models.Member,
            models.Watermarks,
            models.Page,
            models.HistoryPage,
            models.PushRegistration,
            models.ConversationSettings,
        ],
    ),
    (
        "Events",
        [
            models.MessageEvent,
            models.Receipt,
            models.Typing,
            models.Presence,
            models.ConversationChange,
            models.ConnectionState,
            models.ErrorEvent,
        ],
    ),
    (
        "Errors",
        [
            errors.TidingsError,
            errors.InvalidRequest,
            errors.Unauthorized,
            errors.Forbidden,
            errors.NotFound,
            errors.Conflict,
            errors.TooLarge,
            errors.RateLimited,
            errors.Unavailable,
            errors.ServerError,
            errors.ClientClosed,
            errors.ObjectStoreError,
        ],
    ),
    (
        "Reconnects and cursors",
        [backoff.Backoff, store.CursorStore, store.MemoryCursorStore, store.FileCursorStore],
    ),
    (
        "End-to-end encryption (tidings_client.e2ee)",
        [
            e2ee.E2EE,
            e2ee.KeyStore,
            e2ee.MemoryKeyStore,
            e2ee.FileKeyStore,
            e2ee.E2EEError,
            e2ee.WrongPassphrase,
            e2ee.DecryptionError,
            e2ee.MissingRoomKey,
        ],
    ),
]


def _default(value: Any) -> str:
    if callable(value):
        return (
            f"{getattr(value, '__module__', '') or ''}.{getattr(value, '__qualname__', repr(value))}".lstrip(
                "."
            )
        )
    return repr(value)


def _signature(obj: Any, *, skip_self: bool = False) -> str:
    params = []
    seen_kw_only = False
    for param in inspect.signature(obj).parameters.values():
        if skip_self and param.name == "self":
            continue
        text = param.name
        if param.kind is param.VAR_POSITIONAL:
            text, seen_kw_only = f"*{param.name}", True
        elif param.kind is param.VAR_KEYWORD:
            text = f"**{param.name}"
        elif param.kind is param.KEYWORD_ONLY and not seen_kw_only:
            params.append("*")
            seen_kw_only = True
        if param.annotation is not param.empty:
            text += f": {param.annotation}"
        if param.default is not param.empty:
            text += f" = {_default(param.default)}"
        params.append(text)
    returns = inspect.signature(obj).return_annotation
    arrow = f" -> {returns}" if returns is not inspect.Signature.empty and returns != "None" else ""
    return f"({', '.join(params)}){arrow}"


def _doc(obj: Any) -> str:
    return inspect.cleandoc(obj.__doc__ or "").strip()


def _members(cls: type) -> list[str]:
    out = []
    for name, value in cls.__dict__.items():
        if name.startswith("_") and name not in ("__aenter__",):
            continue
        if isinstance(value, property):
            out.append(f"- `{name}` (property): {_doc(value) or ''}".rstrip(": "))
        elif isinstance(value, classmethod | staticmethod):
            continue  # from_json and friends: construction from the wire, not API
        elif inspect.isfunction(value):
            prefix = (
                "async " if inspect.iscoroutinefunction(value) or inspect.isasyncgenfunction(value) else ""
            )
            head = f"- `{prefix}{name}{_signature(value, skip_self=True)}`"
            doc = _doc(value)
            out.append(f"{head}  \n  {doc.replace(chr(10), ' ')}" if doc else head)
    return out


def _render_one(obj: Any) -> str:
    lines = []
    if inspect.isclass(obj):
        if dataclasses.is_dataclass(obj):
            fields = ", ".join(f"{f.name}: {f.type}" for f in dataclasses.fields(obj))
            lines.append(f"### `{obj.__name__}({fields})`")
        elif issubclass(obj, errors.TidingsError):
            lines.append(f"### `{obj.__name__}` (code `{obj.code}`)")
        else:
            lines.append(f"### `{obj.__name__}{_signature(obj.__init__, skip_self=True)}`")
        doc = _doc(obj)
        if doc:
            lines += ["", doc]
        members = _members(obj)
        if members and not issubclass(obj, errors.TidingsError):
            lines += ["", *members]
    else:
        lines.append(f"### `{obj.__name__}{_signature(obj)}`")
        lines += ["", _doc(obj)]
    return "\n".join(lines)


def render() -> str:
    """The reference, as Markdown."""
    parts = [
        START,
        "<!-- generated by `python -m tidings_client.reference docs/sdk.md` from the docstrings -->",
    ]
    for title, objects in SECTIONS:
        parts.append(f"\n## Reference: {title.lower()}\n")
        parts += [_render_one(obj) + "\n" for obj in objects]
    parts.append(END)
    return "\n".join(parts)


def rewrite(text: str) -> str:
    """``text`` with its reference part replaced by a fresh one."""
    head, start, rest = text.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        raise SystemExit(f"the markers {START} and {END} are missing")
    return head + render() + tail


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tidings_client.reference")
    parser.add_argument("doc", type=Path)
    parser.add_argument("--check", action="store_true", help="exit 1 if the doc is out of date")
    args = parser.parse_args(argv)
    current = args.doc.read_text()
    fresh = rewrite(current)
    if args.check:
        if fresh != current:
            sys.exit(
                f"{args.doc}: the API reference is out of date; "
                f"run python -m tidings_client.reference {args.doc}"
            )
        return
    args.doc.write_text(fresh)


if __name__ == "__main__":
    main()
