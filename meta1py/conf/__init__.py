"""meta1.conf: grammar, schema, parser, model and errors.

Every process reads its settings through this package and never sees parse trees or raw
strings: `load_config` / `parse_config` return a frozen `Config`, `dump_config` writes one back,
and `ConfigErrors` carries every problem found in a file. This package imports neither trio
nor socket at module level.
"""

from meta1py.conf.accounts import check_accounts, check_files
from meta1py.conf.dump import defaults_text, dump_config
from meta1py.conf.errors import ConfigError, ConfigErrors
from meta1py.conf.location import config_file
from meta1py.conf.model import (
    SMTPS_DEFAULT_FLAGS,
    SMTPS_FLAGS,
    Config,
    ListenSocket,
    ProcessConfig,
    QmgrConfig,
    Relayhost,
    SmarConfig,
    SmtpcConfig,
    SmtpsConfig,
    listen_sockets,
    process_config,
    process_log_level,
)
from meta1py.conf.parser import config_wire, load_config, parse_config, parse_config_wire, with_test_mode

__all__ = [
    "SMTPS_DEFAULT_FLAGS",
    "SMTPS_FLAGS",
    "Config",
    "ConfigError",
    "ConfigErrors",
    "ListenSocket",
    "ProcessConfig",
    "QmgrConfig",
    "Relayhost",
    "SmarConfig",
    "SmtpcConfig",
    "SmtpsConfig",
    "check_accounts",
    "check_files",
    "config_file",
    "config_wire",
    "defaults_text",
    "dump_config",
    "listen_sockets",
    "load_config",
    "parse_config",
    "parse_config_wire",
    "process_config",
    "process_log_level",
    "with_test_mode",
]
