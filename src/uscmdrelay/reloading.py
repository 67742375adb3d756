"""SIGHUP: reload the configuration and, with TLS, the certificate, key and client CA.

All or nothing: a new configuration and a new TLS context are both loaded before
either replaces the running one, so a reload that fails in any part changes nothing
(logged at ERROR; the old configuration and certificate keep serving). The server calls
`Reloader.reload` from its loop and swaps in what it returns.
"""

import logging
import time

from .config import ConfigError

log = logging.getLogger("uscmdrelay")


class Reloader(object):
    """`loader()` returns a new config.Config or raises ConfigError; `tls_loader()`
    (None without TLS) a new SSLContext or raises ValueError with the reason;
    `metrics` (a metrics_file.MetricsFile, or None) counts the result and is written."""

    def __init__(self, loader, tls_loader=None, metrics=None):
        self.loader = loader
        self.tls_loader = tls_loader
        self.metrics = metrics

    def reload(self, config, tls):
        """Returns the (config, tls context) to serve with from now on: the new ones, or
        `config` and `tls` themselves when the reload is refused."""
        try:
            new_config = self.loader()
            new_tls = tls if self.tls_loader is None else self.tls_loader()
        except ConfigError as error:
            log.error("Config error: %s (reload refused; the running configuration stays)",
                      error)
        except ValueError as error:
            log.error("Config error: %s (reload refused; the running configuration and "
                      "certificate stay)", error)
        except Exception:
            log.exception("reload failed; the running configuration stays")
        else:
            for warning in new_config.warnings:
                log.warning("config: %s", warning)
            log.info("configuration reloaded from %s: %d keys, %d clusters, %d commands%s",
                     new_config.directory, len(new_config.keys), len(new_config.clusters),
                     new_config.command_count,
                     "" if self.tls_loader is None else "; TLS certificate, key and "
                     "client CA reloaded")
            self._count(new_config)
            return new_config, new_tls
        self._count(None)
        return config, tls

    def _count(self, config):
        if self.metrics is not None:
            self.metrics.metrics.reloaded(config, time.time())
            self.metrics.write()
