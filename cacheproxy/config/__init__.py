"""The one typed, immutable configuration object, and how it is loaded.

Sources, later ones winning: defaults < TOML file < ``CACHEPROXY_<SECTION>_<KEY>`` environment
variables < overrides (command-line flags). Each value is converted and checked as it is read, so
a mistake stops the start with a `ConfigError` naming the key (or variable) it came from.

To add a section, declare a frozen dataclass whose fields use `setting()` and add it to `Config`:
the file keys, the environment variable names and the checks all follow from the fields.
`[[routes]]` tables come from the file only; each overrides keys of [cache], [cors], [referer].
"""

from cacheproxy.config.loading import load_config
from cacheproxy.config.sections import (
    AdminConfig,
    CacheConfig,
    Config,
    CorsConfig,
    DemoConfig,
    ForwardConfig,
    LogConfig,
    ProxyConfig,
    RefererConfig,
    RouteConfig,
)
from cacheproxy.config.values import (
    DEFAULT_PATH,
    ENV_PREFIX,
    PLACEHOLDER_MAX_BYTES,
    ConfigError,
    KiB,
    MiB,
    OnInvalid,
    Rule,
    masked_url,
    parse_list,
    parse_listen,
    parse_on_invalid,
    parse_size,
    setting,
)

__all__ = [
    "DEFAULT_PATH",
    "ENV_PREFIX",
    "PLACEHOLDER_MAX_BYTES",
    "AdminConfig",
    "CacheConfig",
    "Config",
    "ConfigError",
    "CorsConfig",
    "DemoConfig",
    "ForwardConfig",
    "KiB",
    "LogConfig",
    "MiB",
    "OnInvalid",
    "ProxyConfig",
    "RefererConfig",
    "RouteConfig",
    "Rule",
    "load_config",
    "masked_url",
    "parse_list",
    "parse_listen",
    "parse_on_invalid",
    "parse_size",
    "setting",
]
