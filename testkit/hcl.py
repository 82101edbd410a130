"""What the Terraform declares, worked out without a cloud: python-hcl2 parses `terraform/`, and
this evaluates the part of HCL the configuration uses (variables with their types' defaults and
validations, locals, `for_each`, `dynamic` blocks, `for` expressions, preconditions and the
functions below), so that a test sees each resource instance with its values.

Terraform itself cannot do this here: `terraform plan` needs the Google provider, which has to be
downloaded. (Where a `terraform` binary is installed, tests/deploy/test_terraform.py has it
evaluate the locals that need no provider, and compares.) What only the cloud knows (another
resource's attributes, the project number) stays a `Ref`, a symbolic path such as
`google_pubsub_topic.topic["work-items"].id`, which a test can compare as well.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import hcl2
import yaml
from lark import Token, Tree


class HclError(Exception):
    """An expression that cannot be evaluated (Terraform would refuse it too)."""


class Ref(str):
    """A value known only once applied: the path of a resource's (or data source's) attribute."""

    def attr(self, name: str) -> Ref:
        return Ref(f"{self}.{name}")

    def index(self, key: Any) -> Ref:  # type: ignore[override]  # str.index is not used on a Ref
        return Ref(f"{self}[{json.dumps(key)}]")


class HclSet(list[Any]):
    """toset(): for_each keys each instance by the element itself."""


ESCAPES = {'\\"': '"', "\\\\": "\\", "\\n": "\n", "\\t": "\t", "$${": "${", "%%{": "%{"}
RESOURCE_TYPES = ("google_", "data")


@dataclass
class Block:
    kind: str
    labels: list[str]
    body: Tree
    file: str = ""


@dataclass
class Scope:
    module: Config
    names: dict[str, Any] = field(default_factory=dict)

    def child(self, **names: Any) -> Scope:
        return Scope(self.module, {**self.names, **names})


def _children(tree: Tree) -> list[Tree | Token]:
    return [
        c
        for c in tree.children
        if not (isinstance(c, Tree) and c.data == "new_line_or_comment")
        and not (isinstance(c, Token) and c.type in {"NL_OR_COMMENT"})
    ]


def _trees(tree: Tree) -> list[Tree]:
    return [c for c in _children(tree) if isinstance(c, Tree)]


def _name(node: Tree | Token) -> str:
    if isinstance(node, Token):
        return str(node)
    if node.data in {"identifier", "keyword"}:
        return str(node.children[0])
    if node.data == "string":
        return "".join(str(p.children[0]) for p in _trees(node) if p.data == "string_part")
    raise HclError(f"not a name: {node.data}")


class Config:
    """Every `.tf` file of a folder, with the variables given to it."""

    def __init__(self, folder: Path, variables: dict[str, Any], **functions: Callable[..., Any]):
        self.folder = folder
        self.blocks: list[Block] = []
        for path in sorted(folder.glob("*.tf")):
            for node in _trees(_trees(hcl2.parses_to_tree(path.read_text()))[0]):
                if node.data == "block":
                    parts = _children(node)
                    labels = [
                        _name(p) for p in parts[1:] if isinstance(p, Tree) and p.data == "string"
                    ]
                    body = next(p for p in parts if isinstance(p, Tree) and p.data == "body")
                    self.blocks.append(Block(_name(parts[0]), labels, body, path.name))
        self.functions = {**FUNCTIONS, **functions}
        self.variables = self._variables(variables)
        self._locals = {
            _name(_children(a)[0]): _children(a)[-1]
            for b in self.blocks
            if b.kind == "locals"
            for a in _trees(b.body)
            if a.data == "attribute"
        }
        self._local_values: dict[str, Any] = {}

    # -- the declarations ---------------------------------------------------------------------

    def local(self, name: str) -> Any:
        if name not in self._local_values:
            if name not in self._locals:
                raise HclError(f"no local {name!r}")
            self._local_values[name] = self.eval(self._locals[name], Scope(self))
        return self._local_values[name]

    def _variables(self, given: dict[str, Any]) -> dict[str, Any]:
        """Each variable as given, or its default; converted to its type (an object's optional
        attributes get their defaults); then its validations hold, or HclError says which not."""
        declared = {b.labels[0]: b for b in self.blocks_of("variable")}
        if unknown := set(given) - set(declared):
            raise HclError(f"no variable {sorted(unknown)} is declared")
        self.variables = {}
        for name, block in declared.items():
            spec = self.raw_attributes(block.body)
            if name in given:
                value = given[name]
            elif "default" in spec:
                value = self.eval(spec["default"], Scope(self))
            else:
                raise HclError(f"variable {name!r} has no default and was not given")
            self.variables[name] = (
                self._convert(value, spec["type"], f"var.{name}") if "type" in spec else value
            )
        for name, block in declared.items():
            for node in _trees(block.body):
                if node.data == "block" and _name(_children(node)[0]) == "validation":
                    inner = next(t for t in _trees(node) if t.data == "body")
                    check = self.body(inner, Scope(self))
                    if not check["condition"]:
                        raise HclError(f"var.{name}: {check['error_message']}")
        return self.variables

    def _convert(self, value: Any, node: Tree, where: str) -> Any:
        """`value` as the type constraint `node` makes it (null stays null)."""
        node = _unwrap(node)
        if node.data == "identifier":
            kind = str(node.children[0])
            if value is None or kind == "any":
                return value
            if kind == "string" and isinstance(value, (int, float, bool, str)):
                return value if isinstance(value, str) else _text(value)
            kinds: dict[str, type | tuple[type, ...]] = {"number": (int, float), "bool": bool}
            ok = kinds[kind]
            if not isinstance(value, ok) or (kind == "number" and isinstance(value, bool)):
                raise HclError(f"{where}: {value!r} is not a {kind}")
            return value
        if node.data != "function_call":
            raise HclError(f"{where}: type {node.data} is not supported by this evaluator")
        kind = _name(_trees(node)[0])
        args = _trees(next(t for t in _trees(node) if t.data == "arguments"))
        if value is None:
            return None
        if kind == "map" and isinstance(value, dict):
            return {k: self._convert(v, args[0], f"{where}[{k!r}]") for k, v in value.items()}
        if kind in {"list", "set"} and isinstance(value, list):
            return [self._convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
        if kind == "object" and isinstance(value, dict):
            out = {}
            for attribute, type_node in _object_elems(_unwrap(args[0])):
                inner = _unwrap(type_node)
                optional = inner.data == "function_call" and _name(_trees(inner)[0]) == "optional"
                if not optional:
                    if attribute not in value:
                        raise HclError(f"{where}: attribute {attribute!r} is required")
                    out[attribute] = self._convert(value[attribute], type_node, where)
                    continue
                spec = _trees(next(t for t in _trees(inner) if t.data == "arguments"))
                given = value.get(attribute)
                if given is None and len(spec) == 2:
                    given = self.eval(spec[1], Scope(self))
                out[attribute] = self._convert(given, spec[0], f"{where}.{attribute}")
            return out  # attributes the type does not name are dropped, as Terraform does
        raise HclError(f"{where}: {value!r} is not a {kind}")

    def blocks_of(self, kind: str, type_: str | None = None) -> list[Block]:
        return [
            b for b in self.blocks if b.kind == kind and (type_ is None or b.labels[0] == type_)
        ]

    def resources(self, type_: str, name: str) -> dict[Any, dict[str, Any]]:
        """The instances of resource `type_.name`, by for_each key (None without for_each)."""
        block = next(
            (b for b in self.blocks if b.kind == "resource" and b.labels == [type_, name]), None
        )
        if block is None:
            raise HclError(f"resource {type_}.{name} is not declared")
        attributes = self.raw_attributes(block.body)
        if "for_each" not in attributes:
            instances = {None: self.body(block.body, Scope(self))}
        else:
            instances = {}
            for key, value in _iterate(self.eval(attributes["for_each"], Scope(self))):
                each = {"key": key, "value": value}
                instances[key] = self.body(block.body, Scope(self, {"each": each}))
        for key, instance in instances.items():
            for lifecycle in instance.get("lifecycle", []):
                for check in lifecycle.get("precondition", []):
                    if not check["condition"]:
                        where = type_ + "." + name + ("" if key is None else f"[{key!r}]")
                        raise HclError(f"{where}: {check['error_message']}")
        return instances

    def resource_types(self) -> set[str]:
        return {b.labels[0] for b in self.blocks if b.kind == "resource"}

    @staticmethod
    def raw_attributes(body: Tree) -> dict[str, Tree]:
        return {
            _name(_children(a)[0]): cast(Tree, _children(a)[-1])
            for a in _trees(body)
            if a.data == "attribute"
        }

    def body(self, body: Tree, scope: Scope) -> dict[str, Any]:
        """A block's body evaluated: attributes, and nested blocks as lists (dynamic ones
        expanded)."""
        out: dict[str, Any] = {}
        for node in _trees(body):
            parts = _children(node)
            if node.data == "attribute":
                name = _name(parts[0])
                if name != "for_each":
                    out[name] = self.eval(parts[-1], scope)
            elif node.data == "block":
                kind = _name(parts[0])
                inner = next(p for p in parts if isinstance(p, Tree) and p.data == "body")
                if kind == "dynamic":
                    label = _name(parts[1])
                    spec = self.raw_attributes(inner)
                    content = next(
                        b for b in _trees(inner)
                        if b.data == "block" and _name(_children(b)[0]) == "content"
                    )  # fmt: skip
                    content_body = next(p for p in _trees(content) if p.data == "body")
                    # A dynamic block, unlike a resource, may iterate over a list too.
                    for key, value in _iterate(self.eval(spec["for_each"], scope), lists=True):
                        iterator = {"key": key, "value": value}
                        block = self.body(content_body, scope.child(**{label: iterator}))
                        out.setdefault(label, []).append(block)
                else:
                    out.setdefault(kind, []).append(self.body(inner, scope))
        return out

    # -- expressions --------------------------------------------------------------------------

    def eval(self, node: Tree | Token, scope: Scope) -> Any:
        if isinstance(node, Token):
            return _token(node)
        rule = node.data
        kids = _children(node)
        trees = _trees(node)
        if rule in {"expr_term"}:
            if len(kids) == 3 and str(kids[0]) == "(":
                return self.eval(kids[1], scope)
            return self.eval(trees[0] if trees else kids[0], scope)
        if rule in {"int_lit", "float_lit", "literal_value"}:
            return _token(cast(Token, kids[0]))
        if rule == "identifier":
            return self._identifier(str(kids[0]), scope)
        if rule == "string":
            return self._template([p for p in trees if p.data == "string_part"], scope)
        if rule.startswith("heredoc"):
            return re.sub(r"^<<-?(\w+)\n|\n\s*\w+\s*$", "", str(kids[0]))
        if rule == "tuple":
            return [self.eval(t, scope) for t in trees]
        if rule == "object":
            out = {}
            for elem in trees:
                key_node, value_node = _trees(elem)
                key_expr = _trees(key_node)[0] if _trees(key_node) else _children(key_node)[0]
                key = _bare_key(key_expr)
                key = self.eval(key_expr, scope) if key is None else key
                out[key] = self.eval(value_node, scope)
            return out
        if rule == "get_attr_expr_term":
            return _get(self.eval(trees[0], scope), _name(_trees(trees[1])[0]), attribute=True)
        if rule == "index_expr_term":
            index = _trees(trees[1])[0]
            return _get(self.eval(trees[0], scope), self.eval(index, scope), attribute=False)
        if rule == "function_call":
            return self._call(_name(trees[0]), node, scope)
        if rule == "conditional":
            condition, yes, no = trees
            return self.eval(yes if self.eval(condition, scope) else no, scope)
        if rule == "unary_op":
            op, operand = str(kids[0]), self.eval(trees[0], scope)
            return (not operand) if op == "!" else -operand
        if rule == "binary_op":
            left = self.eval(trees[0], scope)
            term = _children(trees[1])
            return _binary(str(_children(term[0])[0]) if isinstance(term[0], Tree)
                           else str(term[0]), left, lambda: self.eval(term[1], scope))  # fmt: skip
        if rule in {"for_tuple_expr", "for_object_expr"}:
            return self._for(rule, trees, scope)
        raise HclError(f"{rule} is not supported by this evaluator")

    def _identifier(self, name: str, scope: Scope) -> Any:
        if name in scope.names:
            return scope.names[name]
        if name == "local":
            return _Locals(self)
        if name == "var":
            return self.variables
        if name == "path":
            return {"module": str(self.folder)}
        if name.startswith(RESOURCE_TYPES):
            return Ref(name)
        raise HclError(f"unknown name {name!r}")

    def _template(self, parts: list[Tree], scope: Scope) -> Any:
        values = []
        for part in parts:
            inner = part.children[0]
            if isinstance(inner, Tree) and inner.data == "interpolation":
                values.append(self.eval(_trees(inner)[0], scope))
            else:
                values.append(_unescape(str(inner)))
        if len(values) == 1 and not isinstance(values[0], str):
            return values[0]  # "${x}" is x itself
        return "".join(_text(v) for v in values)

    def _call(self, name: str, node: Tree, scope: Scope) -> Any:
        arguments = next((t for t in _trees(node) if t.data == "arguments"), None)
        args = _trees(arguments) if arguments is not None else []
        expand = arguments is not None and any(str(c) == "..." for c in _children(arguments))
        if name in {"try", "can"}:
            for arg in args:
                try:
                    value = self.eval(arg, scope)
                except (HclError, KeyError, IndexError, TypeError):
                    if name == "can":
                        return False
                    continue
                return True if name == "can" else value
            if name == "can":
                return False
            raise HclError("try(): no argument could be evaluated")
        values = [self.eval(a, scope) for a in args]
        if expand:
            values = [*values[:-1], *values[-1]]
        if name not in self.functions:
            raise HclError(f"function {name}() is not supported by this evaluator")
        return self.functions[name](*values)

    def _for(self, rule: str, trees: list[Tree], scope: Scope) -> Any:
        intro, *rest = trees
        names = [_name(t) for t in _trees(intro) if t.data == "identifier"]
        collection = self.eval(_trees(intro)[-1], scope)
        condition = next((t for t in rest if t.data == "for_cond"), None)
        body = [t for t in rest if t.data != "for_cond"]
        out: Any = {} if rule == "for_object_expr" else []
        for key, value in _iterate(collection, lists=True):
            inner = scope.child(**(dict(zip(names, [key, value], strict=True)) if len(names) == 2
                                   else {names[0]: value}))  # fmt: skip
            if condition is not None and not self.eval(_trees(condition)[0], inner):
                continue
            if rule == "for_tuple_expr":
                out.append(self.eval(body[0], inner))
            else:
                k, v = self.eval(body[0], inner), self.eval(body[1], inner)
                if k in out:
                    raise HclError(f"duplicate key {k!r} in a for expression")
                else:
                    out[k] = v
        return out


def _unwrap(node: Tree) -> Tree:
    while node.data == "expr_term" and len(_trees(node)) == 1 and len(_children(node)) == 1:
        node = _trees(node)[0]
    return node


def _bare_key(key_expr: Tree | Token) -> str | None:
    """An object key written as a bare name (`a = 1`), which is the name itself, not a lookup."""
    if (
        isinstance(key_expr, Tree)
        and key_expr.data == "expr_term"
        and _trees(key_expr)[0].data == "identifier"
        and len(_children(key_expr)) == 1
    ):
        return _name(_trees(key_expr)[0])
    return None


def _object_elems(node: Tree) -> list[tuple[str, Tree]]:
    """The (bare name, value) pairs of an object literal, unevaluated (a type's attributes)."""
    pairs = []
    for elem in _trees(node):
        key_node, value_node = _trees(elem)
        key = _bare_key(_trees(key_node)[0])
        if key is None:
            raise HclError("an object type's attributes are bare names")
        pairs.append((key, value_node))
    return pairs


class _Locals:
    def __init__(self, config: Config) -> None:
        self.config = config


def _get(value: Any, key: Any, *, attribute: bool) -> Any:
    if isinstance(value, _Locals):
        return value.config.local(key)
    if isinstance(value, Ref):
        return value.attr(key) if attribute else value.index(key)
    if isinstance(value, dict):
        if key not in value:
            raise HclError(f"no key {key!r} (has {sorted(value)})")
        return value[key]
    if isinstance(value, list):
        return value[int(key)]
    raise HclError(f"cannot index {type(value).__name__} with {key!r}")


def _iterate(collection: Any, *, lists: bool = False) -> Iterator[tuple[Any, Any]]:
    if isinstance(collection, dict):
        yield from sorted(collection.items())
    elif isinstance(collection, HclSet):
        yield from ((v, v) for v in collection)
    elif isinstance(collection, list):
        if not lists:
            raise HclError("for_each takes a map or a set, not a list")
        yield from enumerate(collection)
    else:
        raise HclError(f"cannot iterate over {collection!r}")


def _binary(op: str, left: Any, right: Callable[[], Any]) -> Any:
    if op == "&&":
        return bool(left) and bool(right())
    if op == "||":
        return bool(left) or bool(right())
    r = right()
    operations: dict[str, Callable[[Any, Any], Any]] = {
        "==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
        "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
        "/": lambda a, b: a / b, "%": lambda a, b: a % b,
    }  # fmt: skip
    return operations[op](left, r)


def _token(token: Token) -> Any:
    text = str(token)
    if text in {"true", "false"}:
        return text == "true"
    if text == "null":
        return None
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    return float(text)


def _unescape(text: str) -> str:
    return re.sub(r'\\["\\nt]|\$\$\{|%%\{', lambda m: ESCAPES[m[0]], text)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (dict, list)) or value is None:
        raise HclError(f"cannot interpolate {value!r} into a string")
    return str(value)


def _merge(*maps: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in maps:
        out.update(m)
    return out


def _coalesce(*values: Any) -> Any:
    return next(v for v in values if v not in (None, ""))


def _lookup(collection: dict[str, Any], key: str, *default: Any) -> Any:
    if key in collection:
        return collection[key]
    if not default:
        raise HclError(f"lookup(): no key {key!r} and no default")
    return default[0]


def _flatten(values: list[Any]) -> list[Any]:
    return [x for v in values for x in (_flatten(v) if isinstance(v, list) else [v])]


def _regex(pattern: str, text: str) -> Any:
    match = re.search(pattern, text)
    if match is None:
        raise HclError(f"regex(): {text!r} does not match {pattern!r}")
    return match[0] if not match.groups() else list(match.groups())


def _filemd5(path: str) -> str:
    file = Path(path)
    return hashlib.md5(file.read_bytes()).hexdigest() if file.is_file() else Ref(f"filemd5({path})")


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "yamldecode": yaml.safe_load,
    "jsonencode": lambda v: json.dumps(v, separators=(",", ":"), sort_keys=True),
    "base64encode": lambda s: base64.b64encode(s.encode()).decode(),
    "file": lambda p: Path(p).read_text(),
    "filemd5": _filemd5,
    "merge": _merge,
    "concat": lambda *lists: [x for lst in lists for x in lst],
    "coalesce": _coalesce,
    "contains": lambda collection, value: value in collection,
    "keys": lambda m: sorted(m),
    "values": lambda m: [m[k] for k in sorted(m)],
    "toset": lambda values: HclSet(sorted(set(values), key=str)),
    "tostring": _text,
    "upper": str.upper,
    "replace": lambda s, old, new: s.replace(old, new),
    "join": lambda sep, values: sep.join(values),
    "ceil": lambda x: math.ceil(x),
    "max": max,
    "setproduct": lambda *sets: [list(t) for t in itertools.product(*sets)],
    "lookup": _lookup,
    "length": len,
    "distinct": lambda values: list(dict.fromkeys(values)),
    "flatten": _flatten,
    "reverse": lambda values: list(reversed(values)),
    "split": lambda sep, text: text.split(sep),
    "alltrue": lambda values: all(values),
    "regex": _regex,
    "nonsensitive": lambda v: v,
}
