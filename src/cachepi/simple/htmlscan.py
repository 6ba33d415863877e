"""What a Simple-API page needs of an HTML document, in one linear pass that builds no tree.

The anchors (their attributes and text), the first `<base href>` and every `<meta>` with a
name, read the way an HTML5 parser (WHATWG tokenizer) reads them: comments, doctypes and
bogus comments are skipped, the contents of `<script>`, `<style>`, `<textarea>`, `<title>`
and the like are text, never tags; `<template>` contents are not part of the document;
attribute names are lowercased, the first of two equal ones wins, an attribute without a
value is None; character references are decoded as in attributes or in text; CR LF and CR
are LF; a tag cut off by the end of the input is dropped.

A tree builder would take time and memory growing with the nesting of the markup (100,000
nested `<div>`s cost lexbor minutes): here every character is looked at a bounded number of
times. What a tree builder does beyond the tokenizer is not repeated: an anchor ends at
`</a>`, at the next `<a>` or at the end of the input, so markup that misnests an anchor with
other elements (`<b><a>x</b>y</a>`) gives one anchor where an HTML5 tree gets two copies.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable
from html.entities import html5 as _ENTITIES
from typing import NamedTuple

Attributes = dict[str, str | None]


class Scan(NamedTuple):
    # Every anchor's attributes, in document order; with `texts`, every anchor's text
    # instead (plain lists of strings and dicts of strings: nothing for the garbage
    # collector to walk, which for a list of 800,000 names costs more than reading it).
    anchors: list[Attributes]
    texts: list[str]
    # The first <base> with an href: its value (None when the attribute has none), or None.
    base_href: str | None
    # name -> the content of each <meta> with that name, in document order (None: no content
    # attribute).
    metas: dict[str, list[str | None]]


_NAME = r"[^\t\n\f />][^\t\n\f />=]*+"
_VALUE = r"""(?:"[^"]*+"|'[^']*+'|[^\t\n\f >"'][^\t\n\f >]*+|(?=>))"""
# What follows a tag's name up to its ">": attributes, each with a value or none (then no "="
# may follow), separated by spaces or "/". A quote never closed does not match: the tag
# then runs to the end of the input (see the "cut off" branch below).
_ATTRIBUTES = (
    rf"(?:[\t\n\f /]*+{_NAME}(?:[\t\n\f ]*+=[\t\n\f ]*+{_VALUE}|(?![\t\n\f ]*+=)))*+"
    r"[\t\n\f /]*+"
)
# Lowercase names, double-quoted values: how index pages write their anchors' attributes.
_PLAIN_ATTRIBUTE = r'[\t\n\f ]++[a-z][-a-z0-9_:.]*+="[^"]*+"'
_PLAIN_ATTRIBUTES = re.compile(r'[\t\n\f ]++([a-z][-a-z0-9_:.]*+)="([^"]*+)"')
# One pattern finds the next piece of markup, whole. Its first branch is the anchor index
# pages consist of: plain attributes and, when it is plain text, its text and end tag (and
# the <br> after it, which changes nothing but SVG or MathML content it would end).
_MARKUP = re.compile(
    r"<(?:"
    rf"a((?:{_PLAIN_ATTRIBUTE})*+)[\t\n\f ]*+>"  # 1
    r"(?:([^<&\x00]*+)</a[\t\n\f ]*+>(<br[\t\n\f ]*+/?>)?)?"  # 2, 3
    rf"|(/?)([A-Za-z][^\t\n\f />]*+)({_ATTRIBUTES})>"  # 4, 5, 6: a tag
    r"|(!--)(?:>|->|.*?(?:--!?>|\Z))"  # 7: a comment
    r"|(!\[CDATA\[)"  # 8: CDATA (only in SVG and MathML; elsewhere a bogus comment)
    r"|(/?[A-Za-z])"  # 9: a tag cut off by the end of the input
    r"|[!?][^>]*+>?|/(?!\Z)[^>]*+>?"  # a doctype or a bogus comment
    r")",
    re.DOTALL,
)
_TAG_NAME = re.compile(r"/?([A-Za-z][^\t\n\f />]*+)")
# One attribute, or the end of the tag. A value that opens a quote it never closes comes out
# as an unquoted value starting with the quote: the tag then runs to the end of the input.
_ATTRIBUTE = re.compile(
    r"[\t\n\f /]*+(?:"
    r"(>)"  # 1
    r"|([^\t\n\f />][^\t\n\f />=]*+)"  # 2: name
    r"""(?:[\t\n\f ]*+=[\t\n\f ]*+(?:"([^"]*+)"|'([^']*+)'|([^\t\n\f >]*+)))?"""  # 3, 4, 5
    r")"
)
_COMMENT_END = re.compile(r"--!?>")
_CDATA_END = re.compile(r"]]>")
_RAW_TEXT = frozenset({"style", "xmp", "iframe", "noembed", "noframes"})
_ESCAPABLE_RAW_TEXT = frozenset({"title", "textarea"})  # RCDATA: references are decoded
_FOREIGN = frozenset({"svg", "math"})
# HTML start tags that end SVG or MathML content (the spec's "breakout" list).
_BREAKOUT = frozenset(
    {
        "b", "big", "blockquote", "body", "br", "center", "code", "dd", "div", "dl", "dt",
        "em", "embed", "h1", "h2", "h3", "h4", "h5", "h6", "head", "hr", "i", "img", "li",
        "listing", "menu", "meta", "nobr", "ol", "p", "pre", "ruby", "s", "small", "span",
        "strong", "strike", "sub", "sup", "table", "tt", "u", "ul", "var",
    }
)  # fmt: skip
_raw_text_end: dict[str, re.Pattern[str]] = {}
# Script data: "<!--" escapes, and inside that "<script" double-escapes, so "</script"
# does not end it (https://html.spec.whatwg.org/#script-data-escaped-state).
_SCRIPT_TOKEN = re.compile(r"(<!--)|(-->)|<(/?)script(?=[\t\n\f />])", re.IGNORECASE)
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

_CHARREF = re.compile(r"&(?:#(?:[xX]([0-9A-Fa-f]+)|([0-9]+));?|([A-Za-z0-9]+;?))")
_LONGEST_ENTITY = max(len(name) for name in _ENTITIES)
# The references HTML escaping writes, decoded the same anywhere: the quick way out.
_COMMON_REFERENCES = (("&lt;", "<"), ("&gt;", ">"), ("&quot;", '"'), ("&#39;", "'"), ("&amp;", "&"))
# Numeric references to C1 controls mean windows-1252 (the spec's table); undefined ones stay.
_C1: dict[int, str] = {}
for _code in range(0x80, 0xA0):
    with contextlib.suppress(UnicodeDecodeError):
        _C1[_code] = bytes([_code]).decode("cp1252")


def scan(
    document: str, texts: bool = False, on_texts: Callable[[list[str]], None] | None = None
) -> Scan:
    """Read `document`: its anchors' attributes or, with `texts`, their texts. With
    `on_texts`, the texts go to it in batches as they are read (and the Scan holds none):
    the 800,000 links of a project list are never all held as strings at once."""
    if "\r" in document:
        document = document.replace("\r\n", "\n").replace("\r", "\n")
    scanner = _Scanner(document, texts, on_texts)
    pos: int | None = 0
    while pos is not None:
        pos = scanner.run(pos)
    scanner.close()
    scanner.hand_over(0)
    return Scan(scanner.anchors, scanner.texts, scanner.base_href, scanner.metas)


# Start tags that need a look: what is collected, what changes how markup is read.
_NOTED = frozenset(
    {"a", "base", "meta", "template", "plaintext", "script", *_FOREIGN, *_RAW_TEXT}
    | _ESCAPABLE_RAW_TEXT
)


# End tags that change something (</br> and </p> too, in SVG or MathML).
_NOTED_END = frozenset({"a", "template", *_FOREIGN})


# Texts handed over to `on_texts` at a time.
_BATCH = 10_000


class _Scanner:
    def __init__(
        self, document: str, texts: bool, on_texts: Callable[[list[str]], None] | None
    ) -> None:
        self.document = document
        self.want_text = texts
        self.on_texts = on_texts
        self.nul = "\x00" in document
        self.anchors: list[Attributes] = []
        self.texts: list[str] = []
        self.base_href: str | None = None
        self.base_found = False
        self.metas: dict[str, list[str | None]] = {}
        # Whether an anchor's text is being collected, and its text so far.
        self.open = False
        self.text: list[str] = []
        self.template = 0  # <template> nesting: its contents are not part of the document
        self.foreign = 0  # <svg>/<math> nesting
        self.open_depth = 0  # the nesting the open anchor is in

    def run(self, pos: int) -> int | None:
        """Read from `pos` on; returns where to go on after a jump (past the text of a
        <script>, say), or None at the end of the input."""
        document = self.document
        anchors = self.anchors
        texts = self.texts
        want_text = self.want_text
        last = pos
        for match in _MARKUP.finditer(document, pos):
            if self.open and match.start() > last and not self.template:
                self._text(document[last : match.start()])
            last = match.end()
            plain = match[1]
            if plain is not None:  # an anchor's start tag with plain attributes
                if self.template:
                    continue
                if self.foreign and match[3]:
                    self._foreign_to(0)
                if want_text:
                    if self.open:
                        self.close()
                    if match[2] is not None:  # its text and end tag too
                        texts.append(match[2])
                        if len(texts) >= _BATCH:
                            self.hand_over(_BATCH)
                    else:
                        self.open, self.text, self.open_depth = True, [], self.foreign
                    continue
                pairs = _PLAIN_ATTRIBUTES.findall(plain)
                attributes: Attributes = dict(pairs)
                if len(attributes) != len(pairs) or self.nul:
                    # The first of two equal names wins; NUL is replaced.
                    tag = self._parse_tag(match.start(1))
                    assert tag is not None
                    attributes = tag[0]
                elif "&" in plain:
                    for key, value in pairs:
                        if "&" in value:
                            attributes[key] = unescape(value, attribute=True)
                anchors.append(attributes)
                continue
            name = match[5]
            if name is not None:
                if self.foreign or name.lower() in (_NOTED_END if match[4] else _NOTED):
                    jump = self._tag(name, bool(match[4]), match.start(6))
                    if jump is not None:
                        return jump
                continue
            if match[7] is not None:  # a comment
                continue
            if match[8] is not None:
                return self._cdata(match.end())
            if match[9] is not None:  # a tag the regular expression could not take
                return self._cut_off_tag(match.start() + 1)
            # a doctype or a bogus comment: nothing to see
        if self.open and not self.template:
            self._text(document[last:])
        return None

    def _tag(self, name: str, end_tag: bool, attributes_at: int) -> int | None:
        """Handle a start or end tag; returns the position to jump to, if any."""
        name = _lower(name)
        if self.nul:
            name = name.replace("\x00", "\ufffd")
        if end_tag:
            if name == "a":
                self.close()
            elif name == "template":
                self.template = max(self.template - 1, 0)
            elif name in _FOREIGN:
                self._foreign_to(max(self.foreign - 1, 0))
            elif name in ("br", "p"):
                self._foreign_to(0)
            return None
        tag = self._parse_tag(attributes_at)
        if tag is None:  # cannot happen for a tag _MARKUP took whole
            return len(self.document)
        attributes, end, self_closing = tag
        return self._start_tag(name, attributes, end, self_closing)

    def _start_tag(
        self, name: str, attributes: Attributes, end: int, self_closing: bool
    ) -> int | None:
        if self.foreign:
            if name in _BREAKOUT or (
                name == "font" and {"color", "face", "size"} & attributes.keys()
            ):
                self._foreign_to(0)
            elif name in _FOREIGN and not self_closing:
                self.foreign += 1
        elif name in _FOREIGN and not self_closing:
            self.foreign = 1
        if name == "template":
            self.template += 1
        elif self.template:
            pass
        elif name == "a":
            self.close()
            if not self.want_text:
                self.anchors.append(attributes)
            elif self.foreign and self_closing:  # <a/> is an empty element in SVG
                self.texts.append("")
            else:
                self.open, self.text, self.open_depth = True, [], self.foreign
        elif name == "base":
            if not self.base_found and "href" in attributes:
                self.base_found, self.base_href = True, attributes["href"]
        elif name == "meta":
            meta_name = attributes.get("name")
            if meta_name is not None:
                self.metas.setdefault(meta_name, []).append(attributes.get("content"))
        if self.foreign:
            return None
        # Elements whose contents are text, not markup.
        document = self.document
        if name == "script":
            text_end, after = _script_end(document, end)
        elif name in _RAW_TEXT or name in _ESCAPABLE_RAW_TEXT:
            text_end, after = _raw_text_end_of(name, document, end)
        elif name == "plaintext":
            text_end = after = len(document)
        else:
            return None
        if self.open and not self.template:
            raw = document[end:text_end]
            if name in _ESCAPABLE_RAW_TEXT:
                self._text(raw)
            else:
                self.text.append(raw.replace("\x00", "\ufffd") if self.nul else raw)
        if after == len(document):
            return after
        tag = self._parse_tag(after)  # the end tag's attributes
        return len(document) if tag is None else tag[1]

    def _cdata(self, pos: int) -> int | None:
        """After "<![CDATA[": in SVG or MathML, text up to "]]>"; elsewhere a bogus comment."""
        document = self.document
        if not self.foreign:
            end = document.find(">", pos)
            return None if end < 0 else end + 1
        match = _CDATA_END.search(document, pos)
        stop = len(document) if match is None else match.start()
        if self.open and not self.template:
            self.text.append(document[pos:stop].replace("\x00", "\ufffd"))
        return None if match is None else match.end()

    def _cut_off_tag(self, pos: int) -> int | None:
        """A tag _MARKUP did not take whole: read by the attribute rules one by one, which
        say where it ends, or that the input ends first (then it is dropped)."""
        match = _TAG_NAME.match(self.document, pos)
        assert match is not None
        tag = self._parse_tag(match.end())
        if tag is None:
            return None
        if self.document.startswith("/", pos):
            return self._tag(match[1], True, match.end()) or tag[1]
        name = _lower(match[1])
        if self.nul:
            name = name.replace("\x00", "\ufffd")
        return self._start_tag(name, *tag) or tag[1]

    def _parse_tag(self, pos: int) -> tuple[Attributes, int, bool] | None:
        """The attributes from `pos` to the end of the tag, the position after it and
        whether it ended with "/>"; None if the input ends first."""
        document = self.document
        attributes: Attributes = {}
        match_attribute = _ATTRIBUTE.match
        while (match := match_attribute(document, pos)) is not None:
            end = match.end()
            if match[1]:
                # "/>" is self-closing when the "/" is no part of a value: `<svg x=y/>` is not.
                closing = match.start(1)
                return attributes, end, closing > match.start() and document[closing - 1] == "/"
            name = match[2]
            pos = end
            if match[3] is not None:
                value: str | None = match[3]
            elif match[4] is not None:
                value = match[4]
            else:
                value = match[5]
                if value and value[0] in "\"'":  # a quote never closed
                    return None
                value = value or None
            name = _lower(name)
            if self.nul:
                name = name.replace("\x00", "\ufffd")
            if name in attributes:
                continue
            if value is not None:
                if "&" in value:
                    value = unescape(value, attribute=True)
                if self.nul:
                    value = value.replace("\x00", "\ufffd")
            attributes[name] = value
        return None

    def _foreign_to(self, depth: int) -> None:
        """Leave SVG or MathML content down to `depth`, and any anchor opened in it."""
        self.foreign = depth
        if self.open and self.open_depth > depth:
            self.close()

    def _text(self, raw: str) -> None:
        if "&" in raw:
            raw = unescape(raw)
        if self.nul:  # dropped from HTML text, replaced in SVG and MathML
            raw = raw.replace("\x00", "\ufffd" if self.foreign else "")
        self.text.append(raw)

    def close(self) -> None:
        if self.open:
            self.texts.append("".join(self.text))
            self.open = False
            self.hand_over(_BATCH)

    def hand_over(self, at_least: int) -> None:
        """Give the texts read so far to `on_texts`, if there are `at_least` of them."""
        if self.on_texts is not None and len(self.texts) >= at_least and self.texts:
            batch = self.texts[:]
            self.texts.clear()  # in place: `run` holds the list
            self.on_texts(batch)


def _lower(name: str) -> str:
    """ASCII lowercase only, as HTML does for tag and attribute names."""
    return name.lower() if name.isascii() else name.translate(_ASCII_LOWER)


def _raw_text_end_of(name: str, document: str, pos: int) -> tuple[int, int]:
    """Where the text of a raw text element that starts at `pos` ends, and where its end
    tag starts (after its name), or the end of the input twice."""
    pattern = _raw_text_end.get(name)
    if pattern is None:
        pattern = _raw_text_end[name] = re.compile(rf"</{name}(?=[\t\n\f />])", re.IGNORECASE)
    match = pattern.search(document, pos)
    if match is None:
        return len(document), len(document)
    return match.start(), match.end()


def _script_end(document: str, pos: int) -> tuple[int, int]:
    escaped = double = False
    while (match := _SCRIPT_TOKEN.search(document, pos)) is not None:
        pos = match.end()
        if match[1]:
            escaped = True
        elif match[2]:
            escaped = double = False
        elif match[3]:  # "</script"
            if not double:
                return match.start(), pos
            double = False
        elif escaped:  # "<script" while escaped
            double = True
    return len(document), len(document)


def unescape(text: str, attribute: bool = False) -> str:
    """`_unescape`, remembered for short texts: the same `data-requires-python="&gt;=3.8"`
    comes on every other anchor."""
    if len(text) <= 64:
        return _unescape_short(text, attribute)
    return _unescape(text, attribute)


def _unescape(text: str, attribute: bool = False) -> str:
    """Character references decoded as an HTML5 tokenizer decodes them, in an attribute
    value or in text: "&amp;", "&amp", "&#38;", "&#x26;"; in an attribute, a legacy name
    without ";" followed by "=" or a letter or digit stays as written ("?a=1&copy=2")."""

    if text.count("&") == sum(text.count(reference) for reference, _ in _COMMON_REFERENCES):
        for reference, character in _COMMON_REFERENCES:  # "&amp;" last: "&amp;lt;" is "&lt;"
            text = text.replace(reference, character)
        return text

    def decode(match: re.Match[str]) -> str:
        hexadecimal, decimal, name = match.groups()
        if name is None:
            digits = hexadecimal if hexadecimal is not None else decimal
            if len(digits.lstrip("0")) > 8:
                return "\ufffd"
            return _code_point(int(digits, 16 if hexadecimal is not None else 10))
        for length in range(min(len(name), _LONGEST_ENTITY), 1, -1):
            entity = _ENTITIES.get(name[:length])
            if entity is None:
                continue
            rest = name[length:]
            if attribute and not name[:length].endswith(";"):
                following = rest[:1] or text[match.end() : match.end() + 1]
                if following == "=" or (following.isascii() and following.isalnum()):
                    return match[0]
            return entity + rest
        return match[0]

    return _CHARREF.sub(decode, text)


_unescape_short = functools.lru_cache(maxsize=1024)(_unescape)


def _code_point(number: int) -> str:
    if number == 0 or number > 0x10FFFF or 0xD800 <= number <= 0xDFFF:
        return "\ufffd"
    return _C1.get(number) or chr(number)
