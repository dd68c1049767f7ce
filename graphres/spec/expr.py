"""Parse stage, part 2: the small, safe expression language of block definitions.

Expressions such as ``planes * 4`` or ``stride if style == 'caffe' else 1`` are parsed with
Python's own parser (``ast``) and evaluated by walking a closed whitelist of node kinds: integer
and string constants, names bound by the block, ``+ - * // %``, comparisons, ``and/or/not``,
``x if c else y`` and ``min``/``max``. Nothing is ever handed to ``eval``; anything outside the
whitelist is an error that names its column.
"""
from __future__ import annotations

import ast
import functools
import operator
import warnings
from typing import Any, Mapping

_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_CMPOPS = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_FUNCS = {"min": min, "max": max, "int": int}
_MAX_LEN = 400
_MAX_INT = 1 << 40  # far above any channel count; stops runaway arithmetic


class ExprError(ValueError):
    """An expression error; ``col`` is the 0-based column inside the expression text."""

    def __init__(self, message: str, col: int = 0, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.col = col
        self.hint = hint


def parse_expr(text: str) -> ast.expression:
    """The checked syntax tree of ``text``, parsed once per distinct text (:func:`_parse_cached`):
    a block's expressions are the same text in every instance of the block. The tree is shared, so
    it is only read (by :func:`_eval`), never changed."""
    return _parse_cached(text)


@functools.lru_cache(maxsize=4096)
def _parse_cached(text: str) -> ast.expression:
    """Parse and check ``text``; errors are not cached (they raise, and are rare)."""
    if len(text) > _MAX_LEN:
        raise ExprError(f"expression is longer than {_MAX_LEN} characters")
    try:
        with warnings.catch_warnings():  # Python's own SyntaxWarnings ("invalid decimal literal") stay quiet
            warnings.simplefilter("ignore")
            tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        # offset 0 means "at the end of the text" (an incomplete expression)
        col = e.offset - 1 if e.offset and e.offset > 0 else len(text.strip())
        raise ExprError(f"cannot parse expression: {e.msg}", col)
    _check(tree.body)
    return tree


def _check(node: ast.AST) -> None:
    allowed = (ast.BinOp, ast.Compare, ast.BoolOp, ast.UnaryOp, ast.IfExp, ast.Name, ast.Constant, ast.Call)
    if not isinstance(node, allowed):
        raise ExprError(f"'{type(node).__name__}' is not allowed in an expression", node.col_offset,
                        "expressions use names, integers, strings, + - * // %, comparisons, "
                        "and/or/not, 'x if c else y', min() and max()")
    if isinstance(node, ast.BinOp) and type(node.op) not in _BINOPS:
        raise ExprError(f"operator '{_op_text(node.op)}' is not allowed", node.col_offset,
                        "use + - * // % (integer arithmetic only)")
    if isinstance(node, ast.Compare) and any(type(op) not in _CMPOPS for op in node.ops):
        raise ExprError("only == != < <= > >= comparisons are allowed", node.col_offset)
    if isinstance(node, ast.UnaryOp) and not isinstance(node.op, (ast.Not, ast.USub, ast.UAdd)):
        raise ExprError("only 'not' and unary minus are allowed", node.col_offset)
    if isinstance(node, ast.Constant) and not isinstance(node.value, (int, str, bool)) or (
        isinstance(node, ast.Constant) and node.value is None
    ):
        raise ExprError(f"constant {node.value!r} is not allowed (integers, strings and booleans only)",
                        node.col_offset)
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCS or node.keywords:
            raise ExprError("only min(...) and max(...) may be called", node.col_offset)
        if not node.args:
            raise ExprError(f"{node.func.id}() needs at least one argument", node.col_offset)
        for arg in node.args:
            _check(arg)
        return
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.operator, ast.cmpop, ast.boolop, ast.unaryop, ast.expr_context)):
            continue
        _check(child)


def _op_text(op: ast.AST) -> str:
    return {ast.Div: "/", ast.Pow: "**", ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^",
            ast.LShift: "<<", ast.RShift: ">>", ast.MatMult: "@"}.get(type(op), type(op).__name__)


def names_in(text: str) -> frozenset[str]:
    """The free names an expression reads (for dependency order and unknown-name checks)."""
    return _names_cached(text)


@functools.lru_cache(maxsize=4096)
def _names_cached(text: str) -> frozenset[str]:
    tree = parse_expr(text)
    return frozenset(n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id not in _FUNCS)


def parse_stats() -> dict[str, int]:
    """How often :func:`parse_expr` parsed a text (misses) and reused a tree (hits), since the
    process started or :func:`clear_parse_cache`."""
    info = _parse_cached.cache_info()
    return {"parses": info.misses, "hits": info.hits, "cached": info.currsize}


def clear_parse_cache() -> None:
    _parse_cached.cache_clear()
    _names_cached.cache_clear()


def evaluate(text: str, env: Mapping[str, Any]) -> Any:
    """Evaluate an expression over ``env``; raise :class:`ExprError` with a column on failure."""
    tree = parse_expr(text)
    return _eval(tree.body, env)


def _eval(node: ast.AST, env: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in env:
            from ..diagnostics import did_you_mean
            raise ExprError(f"unknown name '{node.id}'", node.col_offset, did_you_mean(node.id, env))
        return env[node.id]
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left, env), _eval(node.right, env)
        if isinstance(node.op, (ast.FloorDiv, ast.Mod)) and right == 0:
            raise ExprError("division by zero", node.col_offset)
        if isinstance(node.op, (ast.Add, ast.Sub, ast.Mult)) and _is_number(left) and _is_number(right) \
                and not (_is_int(left) and _is_int(right)):
            # a float parameter (a plugin's ratio) times channels; int() truncates, as Python's int()
            result = _BINOPS[type(node.op)](left, right)
            if abs(result) > _MAX_INT:
                raise ExprError("result is too large", node.col_offset)
            return result
        if not (_is_int(left) and _is_int(right)):
            raise ExprError(f"'{_op_text_bin(node.op)}' needs integers, got {left!r} and {right!r}", node.col_offset)
        result = _BINOPS[type(node.op)](left, right)
        if abs(result) > _MAX_INT:
            raise ExprError("integer result is too large", node.col_offset)
        return result
    if isinstance(node, ast.UnaryOp):
        value = _eval(node.operand, env)
        if isinstance(node.op, ast.Not):
            return not value
        if not _is_number(value):
            raise ExprError(f"unary minus needs a number, got {value!r}", node.col_offset)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BoolOp):
        result = None
        for value_node in node.values:
            result = _eval(value_node, env)
            if isinstance(node.op, ast.And) and not result:
                return result
            if isinstance(node.op, ast.Or) and result:
                return result
        return result
    if isinstance(node, ast.Compare):
        left = _eval(node.left, env)
        for op, right_node in zip(node.ops, node.comparators):
            right = _eval(right_node, env)
            if type(op) not in (ast.Eq, ast.NotEq) and not (_is_number(left) and _is_number(right)):
                raise ExprError(f"cannot order {left!r} and {right!r}", node.col_offset)
            if not _CMPOPS[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        return _eval(node.body, env) if _eval(node.test, env) else _eval(node.orelse, env)
    if isinstance(node, ast.Call):
        args = [_eval(a, env) for a in node.args]
        if node.func.id == "int":
            if len(args) != 1 or not _is_number(args[0]):
                raise ExprError("int() takes one number", node.col_offset)
            return int(args[0])
        if not all(_is_number(a) for a in args):
            raise ExprError(f"{node.func.id}() needs numbers", node.col_offset)
        return _FUNCS[node.func.id](args)
    raise ExprError(f"'{type(node).__name__}' is not allowed", getattr(node, "col_offset", 0))


def _op_text_bin(op: ast.AST) -> str:
    return {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.FloorDiv: "//", ast.Mod: "%"}[type(op)]


def _is_int(value: Any) -> bool:
    return isinstance(value, int)  # bool is an int, as in Python


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and value == value and abs(value) != float("inf")
