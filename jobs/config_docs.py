"""Generate the config reference (docs/CONFIG.md) from the typed schemas, so it cannot drift from the code.

python -m jobs.config_docs            # rewrite docs/CONFIG.md
python -m jobs.config_docs --check    # exit 1 if docs/CONFIG.md is stale (run by the tests)
"""

from __future__ import annotations

import inspect
import re
import sys
import typing

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from jobs.stages import SCHEMAS, schema_for
from kdsr.paths import REPO_ROOT

OUT = REPO_ROOT / "docs" / "CONFIG.md"


def _type_name(annotation: typing.Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation)
    return text.replace("typing.", "").replace("NoneType", "None").replace("pathlib.", "")


def _submodels(annotation: typing.Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found.extend(_submodels(arg))
    return found


def _field_comments(model: type[BaseModel]) -> dict[str, str]:
    """Field name -> the `#` comment on its line or the comment lines just above it in the class body:
    schemas document their defaults with plain comments, and the reference should show them."""
    comments: dict[str, str] = {}
    for klass in reversed(model.__mro__):
        if not (isinstance(klass, type) and issubclass(klass, BaseModel)) or klass is BaseModel:
            continue
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
            continue
        above: list[str] = []
        for line in lines[1:]:
            stripped = line.strip()
            if stripped.startswith("#"):
                above.append(stripped.lstrip("# "))
                continue
            m = re.match(r"\s+(\w+)\s*:[^=#]*(?:=.*?)?(?:#\s*(.*))?$", line)
            if m and not stripped.startswith(("def ", "@", "return", "class ")):
                text = " ".join(above + ([m.group(2)] if m.group(2) else []))
                if text:
                    comments[m.group(1)] = text
            above = []
    return comments


def _rows(model: type[BaseModel], prefix: str = "") -> list[str]:
    rows: list[str] = []
    comments = _field_comments(model)
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        if field.is_required():
            default = "**required**"
        elif field.default is PydanticUndefined:
            default = "(computed)" if field.default_factory is None else _default_repr(field.default_factory())
        else:
            default = _default_repr(field.default)
        subs = _submodels(field.annotation)
        doc = (field.description or comments.get(name, "")).replace("\n", " ").replace("|", "\\|")
        if subs and (len(subs) == 1):
            doc = doc or " ".join((subs[0].__doc__ or "").split()).replace("|", "\\|")
            rows.append(f"| `{key}` | {_container(field.annotation)} | | {doc} |")
            rows.extend(_rows(subs[0], key + _item_path(field.annotation)))
        else:
            rows.append(f"| `{key}` | `{_type_name(field.annotation)}` | {default} | {doc} |".replace("`|`", "|"))
    return rows


def _container(annotation: typing.Any) -> str:
    """How a section holds its sub-config: one, a list of them, or a mapping of names to them."""
    origin = typing.get_origin(annotation)
    if origin is list:
        return "list of sections"
    if origin is dict:
        return "sections by name"
    return "section"


def _item_path(annotation: typing.Any) -> str:
    """The key path from a section to its sub-keys, as an override writes it: `.`, `.0.` for a list's first
    item, `.<name>.` for a mapping's entry."""
    return {list: ".0.", dict: ".<name>."}.get(typing.get_origin(annotation), ".")


def _default_repr(value: typing.Any) -> str:
    if isinstance(value, BaseModel):
        return "(section defaults)"
    text = repr(value)
    return f"`{text}`" if len(text) < 60 else f"`{text[:57]}...`"


def render() -> str:
    parts = [
        "# Config reference",
        "",
        "Generated from the typed schemas by `python -m jobs.config_docs`; a test fails when this file is stale.",
        "Every key can be overridden on the command line as `key.sub=value` (the value is parsed as YAML);",
        "`${VAR}` and `${VAR:-default}` in strings are expanded from the environment. Unknown keys are errors.",
        "",
    ]
    for stage in SCHEMAS:
        schema = schema_for(stage)
        parts += [f"## `{stage}` ({schema.__module__}.{schema.__name__})", ""]
        if schema.__doc__:
            parts += [" ".join(schema.__doc__.split()), ""]
        parts += ["| key | type | default | meaning |", "|---|---|---|---|", *_rows(schema), ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = render()
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run `python -m jobs.config_docs`", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
