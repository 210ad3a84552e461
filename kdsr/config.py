"""Typed, validated configs loaded from YAML, with `key.sub=value` command-line overrides.

Every stage defines its config as a tree of `Config` models (pydantic, unknown keys forbidden), so a
mistyped key, a missing required key or a value of the wrong type fails at load time with a message that
names the file and the dotted key, instead of surfacing as a KeyError an hour into a run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from kdsr.errors import KdsrError
from kdsr.files import write_text_atomic

C = TypeVar("C", bound="Config")


class ConfigError(KdsrError, ValueError):
    """A config file or override that does not fit its schema; the message names the file and key."""


class Config(BaseModel):
    """Base of every stage config: unknown keys are errors, values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=3` -> (['a', 'b'], 3). The value is parsed as YAML, so `x=null`, `x=[1,2]`, `x=true` work."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    if not raw.strip():
        return key.split("."), ""
    try:
        return key.split("."), yaml.safe_load(raw)
    except yaml.YAMLError:
        return key.split("."), raw.strip()  # not YAML: plain text, which the schema then validates


def apply_overrides(raw: dict, overrides: Iterable[str], schema: type[BaseModel] | None = None) -> dict:
    """Set each dotted key in a nested dict; a numeric part indexes a list (`modalities.0.features=...`).
    With a schema, a key that is not a field is refused here, so the error names the override rather
    than a half-built dict."""
    for text in overrides:
        path, value = parse_override(text)
        if schema is not None and _check_path(schema, path, text) and not (value is None or isinstance(value, str)):
            value = text.partition("=")[2].strip()  # a str field keeps the text as typed: `template={title}`
        node: Any = raw
        for i, part in enumerate(path):
            last = i == len(path) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(
                        f"override {text!r}: {'.'.join(path[:i])} has {len(node)} entries, no index {part!r}"
                    )
                part = int(part)
            elif not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(path[:i])!r} is not a section")
            if last:
                node[part] = value
            else:
                if isinstance(node, dict) and node.get(part) is None:
                    node[part] = {}
                node = node[part]
    return raw


def _check_path(schema: type[BaseModel], path: list[str], text: str) -> bool:
    """Refuse a key that is not a field; True when the key names a plain string field."""
    model: Any = schema
    annotation: Any = None
    for i, part in enumerate(path):
        if part.isdigit():
            continue  # a list index: the entry has the list's item schema
        fields = getattr(model, "model_fields", None)
        if fields is None:
            return False  # a free-form mapping below this point (dict[str, ...]): the value is validated later
        if part not in fields:
            where = ".".join(path[: i + 1])
            raise ConfigError(f"override {text!r}: unknown key {where!r} (known here: {', '.join(sorted(fields))})")
        annotation = fields[part].annotation
        model = _submodel(annotation)
    args = set(getattr(annotation, "__args__", ()) or ()) - {type(None)}
    return annotation is str or args == {str}


def _submodel(annotation: Any) -> Any:
    """The Config class inside an annotation such as `Foo`, `Foo | None` or `Optional[Foo]`, else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid config ({err.error_count()} problem{'s' if err.error_count() > 1 else ''})"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        elif e["type"] == "missing":
            lines.append(f"  {key}: missing required key")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_config(schema: type[C], path: str | Path, overrides: Iterable[str] = ()) -> C:
    """Read YAML at `path` (safe loader), apply overrides, validate into `schema`."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror or e})") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(raw).__name__}")
    try:
        raw = expand_env(apply_overrides(raw, overrides, schema))
    except ConfigError as e:  # name the file too, not only the override or variable
        raise ConfigError(f"{path}: {e}") from None
    return validate_config(schema, raw, source=str(path))


_ENV = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def expand_env(value: Any) -> Any:
    """Expand `${VAR}` and `${VAR:-default}` in every string, so shipped configs can say
    `${KDSR_DATA_DIR:-../shared/data}/amazon-beauty` and users point them elsewhere without editing."""
    if isinstance(value, dict):
        return {k: expand_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v) for v in value]
    if isinstance(value, str):

        def sub(m: re.Match) -> str:
            if m.group(1) in os.environ:
                return os.environ[m.group(1)]
            if m.group(2) is not None:
                return m.group(2)
            raise ConfigError(f"environment variable {m.group(1)} is not set (used as {m.group(0)})")

        return _ENV.sub(sub, value)
    return value


def validate_config(schema: type[C], raw: dict, source: str = "<config>") -> C:
    try:
        return schema.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def config_to_dict(cfg: BaseModel) -> dict:
    return cfg.model_dump(mode="json")


def save_config(cfg: BaseModel, out_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config (defaults filled in, overrides applied) next to a run's outputs."""
    # atomic: a resume and the pipeline trust this file
    return write_text_atomic(Path(out_dir) / name, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
