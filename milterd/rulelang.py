"""The expression language of meta rules: symbols combined with and, or, not.

::

    expr := term ( ("or" | "||") term )*
    term := factor ( ("and" | "&&") factor )*
    factor := ("not" | "!") factor | "(" expr ")" | SYMBOL

``and`` binds tighter than ``or``; a SYMBOL is true when that symbol hit the
message.  :func:`parse` turns the text into a small tree once (at load);
:func:`evaluate` walks it per message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import AbstractSet, Callable

_TOKEN = re.compile(r"\s*(?:(\(|\)|&&|\|\||!)|([A-Za-z_][A-Za-z0-9_]*))")
_KEYWORDS = {"and": "&&", "or": "||", "not": "!"}
#: Deepest nesting of parentheses and ``not``: parsing, evaluating and naming recurse per level.
MAX_DEPTH = 100


class MetaSyntaxError(ValueError):
    """A meta expression that cannot be parsed; the message says where."""


@dataclass(frozen=True)
class Name:
    """A symbol reference."""

    symbol: str


@dataclass(frozen=True)
class Not:
    """Negation."""

    operand: "Node"


@dataclass(frozen=True)
class And:
    """Every operand is true."""

    operands: tuple["Node", ...]


@dataclass(frozen=True)
class Or:
    """Some operand is true."""

    operands: tuple["Node", ...]


Node = Name | Not | And | Or


def tokenize(text: str) -> list[str]:
    """The tokens of *text*: parentheses, operators (keywords normalised to &&, ||, !) and names."""
    tokens: list[str] = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match:
            raise MetaSyntaxError(f"unexpected {text[position:].lstrip()[:20]!r} at column {position + 1}")
        operator, name = match.groups()
        if operator:
            tokens.append(operator)
        else:
            tokens.append(_KEYWORDS.get(name, name))  # keywords are lower-case, symbols upper-case
        position = match.end()
    return tokens


def parse(text: str) -> Node:
    """The tree of a meta expression; MetaSyntaxError when it is malformed."""
    tokens = tokenize(text)
    if not tokens:
        raise MetaSyntaxError("empty expression")
    parser = _Parser(tokens)
    node = parser.expr()
    if parser.position != len(tokens):
        raise MetaSyntaxError(f"unexpected {tokens[parser.position]!r} after a complete expression")
    return node


class _Parser:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.position = 0
        self.depth = 0

    def _peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _take(self) -> str:
        token = self._peek()
        if token is None:
            raise MetaSyntaxError("expression ends too early")
        self.position += 1
        return token

    def _chain(self, operator: str, operand: Callable[[], Node], combine: Callable[[tuple[Node, ...]], Node]) -> Node:
        """``operand (operator operand)*``: one operand alone, or all of them combined."""
        operands = [operand()]
        while self._peek() == operator:
            self._take()
            operands.append(operand())
        return operands[0] if len(operands) == 1 else combine(tuple(operands))

    def expr(self) -> Node:
        return self._chain("||", self.term, Or)

    def term(self) -> Node:
        return self._chain("&&", self.factor, And)

    def factor(self) -> Node:
        token = self._take()
        if token in ("!", "("):
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise MetaSyntaxError(f"nested more than {MAX_DEPTH} deep (parentheses and not)")
            try:
                return self._nested(token)
            finally:
                self.depth -= 1
        if token in (")", "&&", "||"):
            raise MetaSyntaxError(f"unexpected {token!r} where a symbol was expected")
        return Name(token)

    def _nested(self, token: str) -> Node:
        if token == "!":
            return Not(self.factor())
        node = self.expr()
        if self._take() != ")":
            raise MetaSyntaxError("missing ')'")
        return node


def evaluate(node: Node, symbols: AbstractSet[str]) -> bool:
    """Whether *node* is true when exactly *symbols* hit."""
    if isinstance(node, Name):
        return node.symbol in symbols
    if isinstance(node, Not):
        return not evaluate(node.operand, symbols)
    if isinstance(node, And):
        return all(evaluate(op, symbols) for op in node.operands)
    return any(evaluate(op, symbols) for op in node.operands)


def names(node: Node) -> set[str]:
    """Every symbol *node* refers to."""
    if isinstance(node, Name):
        return {node.symbol}
    if isinstance(node, Not):
        return names(node.operand)
    return set().union(*(names(op) for op in node.operands))
