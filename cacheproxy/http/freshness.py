"""Freshness and age (RFC 9111 §4.2)."""

from __future__ import annotations

from cacheproxy.http.abnf import bounded_digits
from cacheproxy.http.cache_control import MAX_DELTA, ResponseDirectives

# §4.2.2 / RFC 9110 §15.1: status codes that are heuristically cacheable.
HEURISTICALLY_CACHEABLE = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})


def parse_age(value: str | None) -> int | None:
    """§5.1: Age is one delta-seconds, capped at 2^31 (§1.2.2); absent is 0. None: invalid
    (not 1*DIGIT: negative, a float, a parameter, a list or repeated lines joined by
    commas), and the response is then stale (§4.2.1)."""
    if value is None:
        return 0
    return bounded_digits(value.strip(), MAX_DELTA)


def freshness_lifetime(
    directives: ResponseDirectives,
    *,
    status: int,
    date: float | None,
    expires: str | None,
    expires_at: float | None,
    last_modified: float | None,
    response_time: float,
    shared: bool,
    heuristic_fraction: float,
    heuristic_max_age: float,
) -> float:
    """§4.2.1: the first of s-maxage (shared), max-age, Expires - Date, heuristic."""
    if shared and directives.s_maxage is not None:
        return float(directives.s_maxage)
    if directives.max_age is not None:
        return float(directives.max_age)
    # §4.2.1: without Date, the time the response was received stands in.
    date_value = date if date is not None else response_time
    if expires is not None:
        # §5.3: an invalid Expires (e.g. "0") means already expired.
        if expires_at is None:
            return 0.0
        return max(0.0, expires_at - date_value)
    # §4.2.2: heuristics only for heuristically cacheable statuses (or public).
    if last_modified is None or not (status in HEURISTICALLY_CACHEABLE or directives.public):
        return 0.0
    return max(0.0, min((date_value - last_modified) * heuristic_fraction, heuristic_max_age))


def corrected_initial_age(
    *, age_value: int, date: float | None, request_time: float, response_time: float
) -> float:
    """§4.2.3: the age when the response arrived, from Age, Date and the delay."""
    apparent_age = max(0.0, response_time - date) if date is not None else 0.0
    response_delay = max(0.0, response_time - request_time)
    corrected_age_value = age_value + response_delay
    return max(apparent_age, corrected_age_value)


def stale_by_date(
    *, lifetime: float, date: float | None, age_value: int, request_time: float,
    response_time: float,
) -> float:
    """§4.2.3: when a response arrived stale only because its Date is older than its Age
    and the response delay say (apparent_age above corrected_age_value: the clock that
    wrote Date is behind this one), by how many seconds; else 0. (Varnish and nginx
    leave Date out of the age of a response with max-age; §4.2.3 and Squid do not.)"""
    if date is None:
        return 0.0
    corrected_age_value = age_value + max(0.0, response_time - request_time)
    apparent_age = response_time - date
    if lifetime <= corrected_age_value or apparent_age < lifetime:
        return 0.0
    return apparent_age - corrected_age_value


def current_age(initial_age: float, response_time: float, now: float) -> float:
    """§4.2.3: corrected_initial_age + resident_time."""
    return initial_age + max(0.0, now - response_time)
