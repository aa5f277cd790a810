"""YAML as configs are read: safe, with YAML 1.2 scalars, no duplicate keys, no alias bombs."""

from __future__ import annotations

import re
import reprlib
from typing import Any

import yaml

from training.errors import ConfigError


# --------------------------------------------------------------------------- YAML


# A config has a few hundred values; aliases that expand into more are an alias bomb ("billion laughs").
MAX_YAML_NODES = 100_000
MAX_YAML_DEPTH = 100


class _YamlProblem(yaml.YAMLError):
    """A document that parses but cannot be a config: a duplicate key, an alias bomb, a loop."""

    def __init__(self, message: str, mark):
        super().__init__(message)
        self.message, self.mark = message, mark


class _Yaml12Loader(yaml.SafeLoader):
    """`yaml.SafeLoader` with YAML 1.2 core-schema booleans and floats.

    Before building Python objects it walks the document as its aliases expand
    it: a key given twice in one mapping is an error (PyYAML keeps the last one
    silently), and so is a document that expands into more than
    `MAX_YAML_NODES` values or nests deeper than `MAX_YAML_DEPTH` or loops back
    into itself. Keys brought in by a `<<` merge key may be overridden: that is
    what merging is for.
    """

    key_prefix: tuple = ()  # the dotted key a `--set` value goes to

    def construct_document(self, node):
        self._check_document(node)
        return super().construct_document(node)

    def _check_document(self, root) -> None:
        count = 0
        ancestors: set[int] = set()

        def where(path) -> str:
            keys = list(self.key_prefix) + list(path)
            while keys and isinstance(keys[-1], int):  # name the key, not the list index
                keys.pop()
            return f"key `{'.'.join(map(str, keys))}`: " if keys else ""

        def visit(node, path) -> None:
            nonlocal count
            count += 1
            if count > MAX_YAML_NODES:
                raise _YamlProblem(f"{where(path)}aliases expand the document into more than {MAX_YAML_NODES:,} values "
                                   "(an alias bomb?); a config needs far fewer", node.start_mark)
            if isinstance(node, yaml.ScalarNode):
                return
            if id(node) in ancestors:
                raise _YamlProblem(f"{where(path)}an alias refers to a value that contains it (a loop)", node.start_mark)
            if len(ancestors) >= MAX_YAML_DEPTH:
                raise _YamlProblem(f"{where(path)}nested more than {MAX_YAML_DEPTH} levels deep", node.start_mark)
            ancestors.add(id(node))
            if isinstance(node, yaml.SequenceNode):
                for i, item in enumerate(node.value):
                    visit(item, path + (i,))
            else:
                seen = {}
                for key_node, value_node in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        visit(value_node, path)  # merged keys: this mapping's own keys may override them
                        continue
                    visit(key_node, path)
                    key = None
                    if isinstance(key_node, yaml.ScalarNode):  # other keys are refused when the mapping is built
                        key = self.construct_object(key_node)
                        first = seen.setdefault(key, key_node)
                        if first is not key_node:
                            a, b = first.start_mark, key_node.start_mark
                            at = (f"line {a.line + 1}, columns {a.column + 1} and {b.column + 1}" if a.line == b.line
                                  else f"lines {a.line + 1} and {b.line + 1}")
                            dotted = ".".join(map(str, list(self.key_prefix) + list(path) + [key]))
                            raise _YamlProblem(f"key `{dotted}` appears twice ({at}); give each key once", b)
                    visit(value_node, path + (key,))
            ancestors.discard(id(node))

        visit(root, ())


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def yaml_load(text: str, source: str = "<string>", key_prefix: str = "") -> Any:
    """Parses YAML text safely (no Python objects), with YAML 1.2 scalars.

    Duplicate keys, alias bombs and self-referencing aliases are errors;
    `key_prefix` (the dotted key of a `--set` value) prefixes the keys named in them.
    """
    loader = _Yaml12Loader(text)
    loader.key_prefix = tuple(key_prefix.split(".")) if key_prefix else ()
    try:
        return loader.get_single_data()
    except _YamlProblem as e:
        raise ConfigError(f"{source}:{e.mark.line + 1}: {e.message}") from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid YAML (nested too deeply to be a config)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML ({problem})") from None
    finally:
        loader.dispose()


class _YamlRepr(reprlib.Repr):
    """`reprlib.Repr` that writes booleans and null as YAML does (the user wrote `true`, not `True`)."""

    def repr_bool(self, x, level):
        return "true" if x else "false"

    def repr_NoneType(self, x, level):  # noqa: N802 - reprlib looks methods up by type name
        return "null"


_REPR = _YamlRepr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 3, 8, 8, 8, 8
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 78, 78, 40


def short_repr(value: Any, limit: int = 80) -> str:
    """A one-line repr of a value as the user gave it, cut at about `limit` characters.

    A value can be huge (a long list, a long string, aliases that repeat a list
    many times): error messages show its start only.
    """
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
