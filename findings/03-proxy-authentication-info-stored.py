"""RFC 9111 §3.1: header fields specific to the proxy a cache uses "MUST NOT be stored ...
Effectively, this is limited to Proxy-Authenticate, Proxy-Authentication-Info and
Proxy-Authorization". HOP_BY_HOP names the first and the last, not
Proxy-Authentication-Info (RFC 9110 §11.7.3: it "applies only to the next outbound
client"): it is relayed, stored, and replayed to every later client from storage.
Exits 1 while a hit carries the stored Proxy-Authentication-Info."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _harness import Origin, Proxy, check, http_date, request  # noqa: E402

o = Origin()
p = Proxy(o.port)
failures: list[str] = []
try:
    o.answers["/x"] = lambda m, pa, h, n: (200, [
        ("Date", http_date()), ("Cache-Control", "max-age=60"),
        ("Proxy-Authentication-Info", 'nextnonce="for-the-first-client"'),
        ("Proxy-Authenticate", 'Basic realm="x"')], b"body")
    miss = request(p.port, "GET", "/x")
    hit = request(p.port, "GET", "/x")
    print("miss:", miss.get("Cache-Status"), "| Proxy-Authentication-Info:",
          miss.get("Proxy-Authentication-Info"), "| Proxy-Authenticate:", miss.get("Proxy-Authenticate"))
    print("hit: ", hit.get("Cache-Status"), "| Proxy-Authentication-Info:",
          hit.get("Proxy-Authentication-Info"), "| Proxy-Authenticate:", hit.get("Proxy-Authenticate"))
    check(failures, "; hit" in (hit.get("Cache-Status") or ""), "the second request is a hit")
    check(failures, hit.get("Proxy-Authentication-Info") is None,
          "a hit does not replay the first client's Proxy-Authentication-Info")
    check(failures, miss.get("Proxy-Authentication-Info") is None,
          "Proxy-Authentication-Info is not relayed (as Proxy-Authenticate is not)")
finally:
    p.stop()
sys.exit(1 if failures else 0)
