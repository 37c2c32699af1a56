"""Public suffixes: the names under which anyone can have a site (co.uk, github.io), read
from the Public Suffix List (publicsuffix.org) the `publicsuffixlist` package bundles.

Browsers read the same list to refuse a cookie set for a whole registry (RFC 6265 §5.3
step 5); the config loader reads it to refuse a credentialed CORS grant to every site under
one (Fetch §3.2.5), which is what `*` is refused for. Both sections count: the ICANN one
(registries: co.uk, kawasaki.jp) and the private one (services that give anyone a name under
theirs: github.io, herokuapp.com, s3.amazonaws.com), since a grant to every GitHub Pages
site is a grant to anyone with a GitHub account.

Start-time only: the list is parsed on the first question (10 to 30 ms here, only for a
credentialed wildcard or ~regex entry), never on a request.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import idna
from publicsuffixlist import PSLFILE, PublicSuffixList

from cacheproxy.http.origins import idna_ascii

ICANN = "ICANN"
PRIVATE = "private"


class Suffix(NamedTuple):
    """A public suffix ("co.uk", "foo.ck" under the rule "*.ck") and its section."""

    name: str  # ASCII, as browsers send host names ("xn--55qx5d.cn" for 公司.cn)
    section: str

    def describe(self) -> str:
        """How an error message names it: the suffix, and who hands out names under it."""
        who = ("a registry hands out names under it" if self.section == ICANN
               else "a service gives anyone a site under it")
        return f"{self.name}, a public suffix ({self.section} section of the Public Suffix " \
               f"List: {who})"


class PublicSuffixes:
    """The list, with the questions the config loader asks of it. Rules are kept as the
    list writes them (Unicode) and a name asked about is decoded to match them: encoding
    the list's 459 IDN rules up front would double the start-up cost for one entry."""

    def __init__(self, rules: dict[str, str]) -> None:
        """`rules`: each rule ("co.uk", "*.ck", "!www.ck") and its section."""
        self._list = PublicSuffixList(rules, accept_unknown=True, accept_encoded_idn=False)
        self._section = {rule: section for rule, section in rules.items()
                         if not rule.startswith("!")}

    @functools.cached_property
    def _multi(self) -> list[tuple[str, frozenset[str]]]:
        """The rules of two labels or more, with their labels but a wildcard's "*"."""
        return [(rule, frozenset(rule.split(".")) - {"*"})
                for rule in self._section if "." in rule]

    @functools.cached_property
    def _above(self) -> dict[str, list[str]]:
        """Every domain with public suffixes strictly under it ("amazonaws.com" for
        s3.amazonaws.com): a wildcard over it reaches strangers' sites too."""
        above: dict[str, list[str]] = {}
        for rule in self._section:
            labels = rule.split(".")
            for i in range(1, len(labels) - 1):
                above.setdefault(".".join(labels[i:]), []).append(rule)
        return above

    def public(self, domain: str) -> Suffix | None:
        """`domain` (ASCII, lowercase) as a public suffix, or None. A single label is one
        by the list's default rule "*" (any top-level domain)."""
        name = _unicode(domain)
        if not self._list.is_public(name):
            return None
        parent = name.partition(".")[2]
        for rule in (name, "*." + name, "*." + parent):  # (a wildcard rule's root is public)
            if rule in self._section:
                return Suffix(domain, self._section[rule])
        return Suffix(domain, ICANN)  # (an unlisted top-level domain)

    def beneath(self, domain: str) -> list[Suffix]:
        """The public suffixes strictly under `domain` (for "amazonaws.com":
        s3.amazonaws.com, *.compute.amazonaws.com, ...); a rule's "*" stays in its name."""
        return [self._suffix(rule) for rule in self._above.get(_unicode(domain), ())]

    def sharing_a_label(self, words: set[str]) -> list[Suffix]:
        """The rules of two labels or more with a label among `words` (a ~regex's): the
        multi-label public suffixes it may be a wildcard over, even with its other labels
        a class ("co" in "~https://[a-z]+\\.co\\.[a-z]{2}"). At most about 2,000 (for
        "jp"), tried in a few ms."""
        words = words | {_unicode(word) for word in words if word.startswith("xn--")}
        return [self._suffix(rule) for rule, labels in self._multi if labels & words]

    def _suffix(self, rule: str) -> Suffix:
        return Suffix(rule if rule.isascii() else idna_ascii(rule), self._section[rule])


def _unicode(domain: str) -> str:
    """An ASCII name's IDN labels decoded, as the list writes them; a label that is no
    valid punycode is kept as it is (no rule has one)."""
    if "xn--" not in domain:
        return domain
    labels = []
    for label in domain.split("."):
        try:
            labels.append(idna.decode(label) if label.startswith("xn--") else label)
        except UnicodeError:  # (idna.IDNAError is one)
            labels.append(label)
    return ".".join(labels)


@functools.cache
def public_suffixes() -> PublicSuffixes:
    """The bundled list, parsed once per process on first use."""
    rules: dict[str, str] = {}
    section = ICANN
    with open(PSLFILE, encoding="utf-8") as lines:
        for line in lines:
            if line.startswith("// ===BEGIN PRIVATE DOMAINS==="):
                section = PRIVATE
            rule = line.split(" ", 1)[0].strip().lower()
            if rule and not rule.startswith("//"):
                rules[rule] = section
    return PublicSuffixes(rules)
