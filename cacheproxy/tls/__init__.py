"""TLS for the proxy: the contexts that verify https origins (`upstream`) and the local
certificate authority that lets forward mode see inside CONNECT (`ca`).

`ca` needs the `cryptography` package; it is imported only where it is used, so the rest
of the proxy starts without loading it.
"""
