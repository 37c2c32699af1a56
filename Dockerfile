# cacheproxy: the caching proxy, or with `cacheproxy demo` the bundled demo origin.
# Config comes from /app/config/cacheproxy.toml (mount ./config there) and from
# CACHEPROXY_<SECTION>_<KEY> environment variables, which win over the file.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The user, then the dependencies at the versions constraints.txt pins (pyproject.toml
# states only minimums; `make lock` refreshes the pins), in a layer of their own: a rebuild
# after a change to the code or the README reinstalls the package only, not every wheel.
RUN groupadd --system --gid 10001 cacheproxy \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/cacheproxy \
        cacheproxy \
    && install -d -o 10001 -g 10001 -m 0700 /home/cacheproxy/.local \
        /home/cacheproxy/.local/share /home/cacheproxy/.local/share/cacheproxy
COPY constraints.txt ./
RUN pip install --no-cache-dir -r constraints.txt

# The package from this repository (a dependency added to pyproject.toml and not yet in
# constraints.txt is still installed, unpinned).
COPY pyproject.toml README.md ./
COPY cacheproxy ./cacheproxy
RUN pip install --no-cache-dir -c constraints.txt .

# Defaults for a container: listen on every interface (the file's default is loopback),
# and a pid file, so `docker compose exec proxy-a cacheproxy reload` (or stop) finds serve.
COPY config ./config
ENV CACHEPROXY_PROXY_LISTEN=0.0.0.0:8080 \
    CACHEPROXY_DEMO_LISTEN=0.0.0.0:8081 \
    CACHEPROXY_PROXY_PID_FILE=/tmp/cacheproxy.pid

# The user writes only to /tmp (the pid file) and its home: forward mode's local CA is made
# in ~/.local/share/cacheproxy (forward.ca_dir ""), made here so that a named volume
# mounted there to keep the CA starts owned by the user.
USER 10001:10001
EXPOSE 8080

# Liveness only: a replica whose Redis or origin is down still answers (see /readyz).
# `cacheproxy health` asks healthz where the config (file and environment) puts it:
# admin.listen or proxy.listen, under admin.prefix, never through an http_proxy.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["cacheproxy", "health"]

# Exec form: cacheproxy is PID 1 and gets SIGTERM (graceful stop) and SIGHUP (reload).
CMD ["cacheproxy", "serve"]
