"""Edits to params.yaml (`python -m tasks set KEY=VALUE`, the flow's parameters): dotted keys set in place, the file's
comments kept, and the result validated by tasks/config.py before it replaces the file, as `dvc exp run -S` would
write it. Reading params.yaml is tasks/config.py's alone."""

from __future__ import annotations

import shutil
from pathlib import Path

from tasks import paths
from tasks.config import Settings, YAMLError, load_settings, read_yaml, yaml_problem
from tasks.errors import SliceWiseError


def parse_assignments(items: list[str] | tuple[str, ...]) -> dict[str, object]:
    """`["train.lr=0.001", "profiles.quick.modalities=[flair,t2]"]` → dotted keys to YAML-typed values, as
    `dvc exp run -S` reads them; an item without `=` is a SliceWiseError naming it."""
    updates = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SliceWiseError(f"expected KEY=VALUE, got {item!r}")
        # the last would win without a word, as a key twice in params.yaml is refused; `a.b={c: 1}` and `a.b.c=2`
        # name one key twice too
        for earlier in updates:
            if key == earlier or key.startswith(f"{earlier}.") or earlier.startswith(f"{key}."):
                raise SliceWiseError(f"{key if key == earlier else f'{earlier} and {key}'} given twice "
                                     f"({earlier}={updates[earlier]!r} and {item!r}): give it once")
        try:
            updates[key] = read_yaml(value)
        except YAMLError as exc:
            # a cron (`*/5 * * * *`: `*` starts an alias) or `@daily` (`@` is reserved) is text YAML cannot read bare
            text = value[:1] in "*@&!%`|>" or (": " in value and value[:1] not in "{[")  # a mapping is no text
            hint = f"; quote a text value: {key}='\"{value}\"'" if text else ""
            # the problem itself ("found duplicate key"), not only its context ("while constructing a mapping")
            why = "; ".join(part for part in (getattr(exc, "context", None), getattr(exc, "problem", None)) if part) \
                or str(exc).splitlines()[0]
            raise SliceWiseError(f"{item!r}: the value is not valid YAML ({why}){hint}") from exc
    return updates


def set_params(updates: dict[str, object], path: Path | str = paths.PARAMS) -> Settings:
    """Write dotted-key updates into params.yaml keeping its comments, as `dvc exp run -S` would.

    Used to switch profile or data source so that DVC sees the change and reruns what depends on it.
    The result is validated before it replaces the file, so a bad value never lands.
    """
    from ruamel.yaml import YAML  # DVC's own YAML library: round-trips comments

    # the file itself: a params.yaml that is a link (the Docker worker keeps it on a volume) stays a link to it;
    # errors name the path as given
    shown, path = Path(path), Path(path).resolve()
    rt = YAML()
    # the file as it was written, but for the values set: quotes kept (the cron string), null written as null (not as
    # an empty value) and no line re-wrapped
    rt.preserve_quotes, rt.width = True, 4096
    rt.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    try:
        raw = path.read_bytes()
        crlf = b"\r\n" in raw  # Windows line ends are read as \n and written back as they were
        text = raw.decode("utf-8").replace("\r\n", "\n")
        doc = rt.load(text)
    except FileNotFoundError as exc:
        raise SliceWiseError("parameters file not found", shown) from exc
    except Exception as exc:  # noqa: BLE001 - YAML errors, an unreadable file; ruamel refuses a key given twice too
        raise SliceWiseError(f"cannot update the parameters: {yaml_problem(exc)}", shown) from exc
    if not isinstance(doc, dict):
        raise SliceWiseError("the parameters file holds no mapping of keys", shown)
    for dotted, value in updates.items():
        node = doc
        *parents, leaf = dotted.split(".")
        for key in parents:
            if not isinstance(node, dict) or key not in node:
                raise SliceWiseError(f"unknown key {dotted!r}: no {key!r} there", shown)
            node = node[key]
        if not isinstance(node, dict):  # e.g. `profile.x=1`: `profile` holds a value, not keys
            raise SliceWiseError(f"unknown key {dotted!r}: {'.'.join(parents)} holds a value, not keys", shown)
        try:
            written = _as_written(value)
        except SliceWiseError as exc:
            raise SliceWiseError(f"{dotted}: {exc.reason}", shown) from exc
        _put(node, leaf, written)
    tmp = path.with_suffix(".yaml.tmp")
    try:
        with tmp.open("w", newline="\r\n" if crlf else None) as fh:
            rt.dump(doc, fh)
        try:
            settings = load_settings(tmp)
        except SliceWiseError as exc:  # name the file the user edits, not the temporary copy
            raise SliceWiseError(exc.reason, shown) from exc
        _refuse_changes_beyond(updates, text, tmp, shown)
        shutil.copymode(path, tmp)  # a params.yaml kept private (0640) stays so
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # a bad value never lands, and leaves no params.yaml.tmp behind
    return settings


def _refuse_changes_beyond(updates: dict[str, object], before: str, after: Path, shown: Path) -> None:
    """Refuse an edit that changes a key it does not name: a part of params.yaml shared through a YAML anchor and alias
    (`quick: &q`, `model: *q`) or a merge key (`<<: *q`) is one node, so setting it in one place set it in all."""
    old, new = _dotted_values(read_yaml(before)), _dotted_values(read_yaml(after.read_text(encoding="utf-8")))
    named = tuple(updates)
    beyond = sorted(key for key in old.keys() | new.keys() if old.get(key, _ABSENT) != new.get(key, _ABSENT)
                    and not any(key == name or key.startswith(f"{name}.") for name in named))
    if beyond:
        raise SliceWiseError(f"setting {', '.join(named)} would also change {', '.join(beyond[:5])}"
                             f"{' and more' if len(beyond) > 5 else ''}: params.yaml shares that part through a YAML "
                             "anchor (&) and alias (*) or a merge key (<<); write it out in full where it should "
                             "differ, then set it", shown)


_ABSENT = object()


def _dotted_values(document: object, prefix: str = "") -> dict[str, object]:
    """Every leaf of a parsed YAML document under its dotted key (lists are leaves)."""
    if not isinstance(document, dict):
        return {prefix: document}
    leaves: dict[str, object] = {}
    for key, value in document.items():
        leaves |= _dotted_values(value, f"{prefix}{key}." if isinstance(value, dict) else f"{prefix}{key}")
    return leaves


def _put(node: dict, key: str, value: object) -> None:
    """`node[key] = value`, except that a mapping set over a mapping changes only the keys it names:
    `profiles.quick.model={depth: 3}` keeps base_channels as params.yaml has it, where replacing the block fell back
    to the code's defaults, which are not params.yaml's."""
    if isinstance(value, dict) and isinstance(node.get(key), dict):
        for inner, inner_value in value.items():
            _put(node[key], inner, inner_value)
    elif isinstance(value, list) and _flow_style(node.get(key)):
        from ruamel.yaml.comments import CommentedSeq

        flow = CommentedSeq(value)  # `[flair, t2]` stays on its line, as it was written, not a block of `- ` lines
        flow.fa.set_flow_style()
        node[key] = flow
    else:
        node[key] = value


def _flow_style(node: object) -> bool:
    return bool(getattr(getattr(node, "fa", None), "flow_style", lambda: False)())


def _as_written(value: object, within: tuple[int, ...] = ()) -> object:
    """`value` as it must be written for params.yaml's readers to read it back: a string that would not read back as
    itself (`*/5 * * * *` does not parse at all; `null` would read as nothing) is written in quotes. A value that
    holds itself (`&a [*a]`) cannot be written at all: a SliceWiseError, not a RecursionError."""
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString

    if isinstance(value, (dict, list)):
        if id(value) in within:
            raise SliceWiseError("a value that holds itself (a YAML alias inside its own anchor) cannot be written to "
                                 "params.yaml")
        within += (id(value),)
    if isinstance(value, str) and not _reads_back(value):
        return DoubleQuotedScalarString(value)
    if isinstance(value, dict):
        return {key: _as_written(inner, within) for key, inner in value.items()}
    if isinstance(value, list):
        return [_as_written(inner, within) for inner in value]
    return value


def _reads_back(text: str) -> bool:
    try:
        return read_yaml(text) == text
    except YAMLError:
        return False
