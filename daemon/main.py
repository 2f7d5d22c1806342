"""``acquired``: the daemon's entry point.

Start-up order matters for systemd: READY=1 is sent only once the store is open, the
control socket listens and the inbox watcher runs. SIGTERM/SIGINT stop within a few
seconds with progress saved; SIGHUP re-reads the configuration.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from types import FrameType

from acquired.common import redact
from acquired.daemon.config import Config
from acquired.daemon.control import ControlServer, check_socket_path
from acquired.daemon.discovery import remove_record, write_record
from acquired.daemon.errors import describe
from acquired.daemon.inbox import FolderWatcher
from acquired.daemon.lock import StateLock
from acquired.daemon.logs import setup_logging, under_systemd
from acquired.daemon.messages import InboxFile, Reload, TorrentEvent, WatchedFile
from acquired.daemon.metrics import Metrics
from acquired.daemon.notify import Notifier
from acquired.daemon.service import VERSION, Service
from acquired.daemon.store import Store
from acquired.daemon.torrents import engine_settings
from acquired.sources.torrent import TorrentEngine

LOG = logging.getLogger("acquired")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The daemon's command line."""
    parser = argparse.ArgumentParser(
        prog="acquired",
        description="Dataset-acquisition daemon: drop manifests into the inbox, get verified data.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="configuration file (default: embedded defaults, state under ./var)",
    )
    parser.add_argument("--version", action="version", version=f"acquired {VERSION}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT; the exit code says why it stopped."""
    args = parse_args(argv)
    notifier = Notifier()
    # Handlers before anything can reach the daemon: a signal that arrives while it
    # starts must not take the default action (SIGHUP would kill it).
    signals = _Signals(args, notifier)
    signals.install()
    try:
        config = Config.load(args.config)
        check_socket_path(config.socket_path)
    except Exception as exc:
        return _refuse(exc, 2)
    redact.configure(config.redact_query_params)
    try:
        for folder in (config.data_root, config.inbox, config.state_dir, config.runtime_dir):
            folder.mkdir(parents=True, exist_ok=True)
        # Nothing that runs threads (the torrent session above all) may start before
        # the state folder and the socket are ours: a refused start must exit cleanly.
        lock = StateLock.acquire(config.state_dir)
    except Exception as exc:
        return _refuse(exc, 1)
    try:
        return _run(args, config, notifier, signals)
    finally:
        lock.release()


def _refuse(exc: BaseException, code: int) -> int:
    info = describe(exc)
    print(f"acquired: {info.message}\n  hint: {info.hint}", file=sys.stderr)
    return code


class _Signals:
    """SIGTERM/SIGINT stop the daemon, SIGHUP reloads its configuration; one that comes
    before the service exists is remembered (a stop) or has nothing to do (a reload)."""

    def __init__(self, args: argparse.Namespace, notifier: Notifier) -> None:
        self.args = args
        self.notifier = notifier
        self.service: Service | None = None
        self.stop_requested = False
        self.reload_requested = False

    def install(self) -> None:
        """Take over SIGTERM, SIGINT and SIGHUP."""
        signal.signal(signal.SIGTERM, self.on_stop)
        signal.signal(signal.SIGINT, self.on_stop)
        signal.signal(signal.SIGHUP, self.on_reload)

    def attach(self, service: Service) -> None:
        """From now on, signals act on ``service`` (and one that came before does now)."""
        self.service = service
        if self.stop_requested:
            service.stop()
        elif self.reload_requested:
            self.on_reload(signal.SIGHUP, None)

    def on_stop(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM, SIGINT: stop with progress saved."""
        LOG.info("received %s; stopping", signal.Signals(signum).name)
        if self.service is None:
            self.stop_requested = True
        else:
            self.service.stop()

    def on_reload(self, signum: int, frame: FrameType | None) -> None:
        """SIGHUP: read the configuration again."""
        if self.service is None:
            self.reload_requested = True
            return
        self.notifier.reloading()
        try:
            new = Config.load(self.args.config)
            redact.configure(new.redact_query_params)
            self.service.post(Reload(new))
        except Exception as exc:
            info = describe(exc)
            LOG.error("configuration not reloaded: %s", info.message, extra={"code": info.code})
        self.notifier.ready()


def _run(args: argparse.Namespace, config: Config, notifier: Notifier, signals: _Signals) -> int:
    try:
        control = ControlServer(config.socket_path)
    except Exception as exc:
        return _refuse(exc, 1)
    # The local log file lets `acquirectl logs` work where the journal is not readable.
    setup_logging(config.log_level, log_file=config.state_dir / "acquired.log")
    config.runtime_dir.chmod(0o750)
    try:
        store = Store(config.db_path)
    except Exception as exc:
        info = describe(exc)
        LOG.error("%s (%s)", info.message, info.hint, extra={"code": info.code})
        control.stop()
        return 1
    metrics = Metrics()
    try:
        if metrics.start(config.metrics.listen):
            LOG.info("metrics on %s", metrics.url)
    except Exception as exc:
        info = describe(exc)
        LOG.error("metrics endpoint not started: %s", info.message, extra={"code": info.code})
    service = Service(config, store, notifier=notifier, metrics=metrics)
    signals.attach(service)
    if config.cluster is not None:
        from acquired.daemon.redisqueue import start_cluster_check  # redis: a fleet only

        start_cluster_check(config.cluster)

    engine: TorrentEngine | None = None
    try:
        engine = TorrentEngine(
            engine_settings(config),
            config.state_dir / "torrent",
            lambda event: service.post(TorrentEvent(event)),
        )
        engine.start()
    except Exception as exc:
        # HTTP sources still work; torrent-only files fail with this reason.
        engine = None
        info = describe(exc)
        LOG.error("torrent engine not started: %s", info.message, extra={"code": info.code})
        service.attach_torrents(None, f"the torrent engine did not start: {info.message}")
    else:
        service.attach_torrents(engine)
    # Recorded before the socket answers, so whoever reaches it also finds the record.
    record = None if under_systemd() else write_record(config, args.config)
    control.start(service.call)
    (config.inbox / "rejected").mkdir(parents=True, exist_ok=True)
    watchers = [FolderWatcher(config.inbox, lambda path: service.post(InboxFile(path)))]
    watchers += [
        FolderWatcher(folder, lambda path: service.post(WatchedFile(path)), recursive=True)
        for folder in config.unpack.watch_dirs
    ]
    stopped_cleanly = False
    try:
        for watcher in watchers:
            watcher.start()
        LOG.info(
            "acquired %s ready: inbox %s, data %s, socket %s",
            VERSION,
            config.inbox,
            config.data_root,
            config.socket_path,
        )
        notifier.ready()
        service.run()
        stopped_cleanly = True
    finally:
        remove_record(record)
        for watcher in watchers:
            watcher.stop()
        control.stop()
        if engine is not None and not stopped_cleanly:
            # The libtorrent session must be closed before the interpreter exits, or its
            # threads abort the process.
            engine.stop(timeout=5)
        metrics.stop()
        store.close()
    LOG.info("acquired stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
