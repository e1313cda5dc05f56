"""Where the `mmcurate` command's log records go: mmcurate's own lines on the console, every
record (third-party ones too) in a log file of the run.

Without `-v` the console shows mmcurate's records (loggers `mmcurate*`) from INFO up and other
libraries' from WARNING up, except warnings that are never actionable (`NOT_ACTIONABLE`: Beam's
GCP client and `resource` module probes, Dask's partition-size note). Everything from INFO up,
those included, goes to a debug log: `OUT/_logs/debug-<utc time>-<pid>.log` for `run` and
`corpus` on a local output (the newest `KEEP_LOGS` are kept; else `mmcurate-debug-...log` in
the temp folder), opened once the command holds its output; records logged before that
(imports, start-up checks) are kept in memory and written first. With `-v` the console shows
every record (DEBUG up).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
import tempfile

FORMAT = "%(asctime)s %(levelname).1s %(name)s: %(message)s"
DATEFMT = "%H:%M:%S"

# Warnings third-party libraries log that say nothing a user can act on: Beam's probe of the
# GCP client libraries it does not need, the `resource` module its metrics look for on every
# bundle (8 lines a run), the Dask runner's note on its partition size
NOT_ACTIONABLE = ("apitools not found", "Resource module is not available",
                  "The new default partition size is")

# records kept in memory before the log file is opened (imports and checks log a few dozen)
_BUFFER_MAX = 10_000
# debug logs kept per output folder: the newest ones (a log is ~250 lines for a small run)
KEEP_LOGS = 20


def _own(record: logging.LogRecord) -> bool:
    return record.name == "mmcurate" or record.name.startswith("mmcurate.")


class _Console(logging.Filter):
    """mmcurate's records from the handler's level up; others only from WARNING up, and never
    a `NOT_ACTIONABLE` one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _own(record):
            return True
        if record.levelno < logging.WARNING:
            return False
        message = record.getMessage()
        return not any(n in message for n in NOT_ACTIONABLE)


class DebugLog(logging.Handler):
    """Every record into a file, once `open(path)` names it; until then held in memory (the
    oldest dropped beyond `_BUFFER_MAX`), so the lines of imports and start-up checks are in
    the file too. Commands that never open it (audit, config, a usage error) write nothing."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter(FORMAT, "%Y-%m-%d %H:%M:%S"))
        self.path: str | None = None
        self._buffer: list[logging.LogRecord] = []
        self._stream = None

    def emit(self, record: logging.LogRecord) -> None:
        if self._stream is None:
            self._buffer.append(record)
            del self._buffer[:-_BUFFER_MAX]
            return
        try:
            self._stream.write(self.format(record) + "\n")
            self._stream.flush()
        except Exception:  # noqa: BLE001 - a log file must never fail the run
            self.handleError(record)

    def open(self, path: str) -> str:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        stream = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the process
        self.acquire()
        try:
            self._stream, self.path = stream, path
            for record in self._buffer:
                stream.write(self.format(record) + "\n")
            self._buffer.clear()
            stream.flush()
        finally:
            self.release()
        return path


def _ours(handler: logging.Handler) -> bool:
    return isinstance(handler, DebugLog) or getattr(handler, "_mmcurate", False)


def setup(verbose: bool, force: bool = False) -> DebugLog | None:
    """The console handler (stderr) and the debug log on the root logger; returns the debug
    log (`open_debug_log` names its file). As `logging.basicConfig`, nothing is changed when
    the process has set up logging itself (root handlers that are not these: a host
    application, pytest), unless `force`; set up again, these replace the earlier ones."""
    import warnings

    # pyannote warns at import that torchcodec (its file decoder) is missing; mmcurate always
    # hands it audio in memory, so the warning only alarms users
    warnings.filterwarnings("ignore", message=r"\s*torchcodec is not installed")
    root = logging.getLogger()
    if not force and any(not _ours(h) for h in root.handlers):
        return None
    remove()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter(FORMAT, DATEFMT))
    console._mmcurate = True  # type: ignore[attr-defined]
    if not verbose:
        console.addFilter(_Console())
    root.addHandler(console)
    debug = DebugLog()
    root.addHandler(debug)
    return debug


def remove() -> None:
    """Take the handlers `setup` added off the root logger."""
    root = logging.getLogger()
    for h in [h for h in root.handlers if _ours(h)]:
        root.removeHandler(h)
        if isinstance(h, DebugLog) and h._stream is not None:
            h._stream.close()


def debug_log() -> DebugLog | None:
    return next((h for h in logging.getLogger().handlers if isinstance(h, DebugLog)), None)


def open_debug_log(output: str | None) -> str | None:
    """Open the debug log of a command writing `output` (module docstring); its path, or None
    when the CLI set up no debug log or no file can be written."""
    handler = debug_log()
    if handler is None:
        return None
    if handler.path:
        return handler.path
    name = f"debug-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{os.getpid()}.log"
    places = [os.path.join(tempfile.gettempdir(), "mmcurate-" + name)]
    if output and "://" not in output:
        places.insert(0, os.path.join(os.path.abspath(output), "_logs", name))
    for path in places:
        try:
            handler.open(path)
        except OSError:
            continue
        if path.startswith(os.path.join(os.path.abspath(output or "."), "_logs")):
            _prune(os.path.dirname(path))
        return path
    return None


def _prune(folder: str) -> None:
    """Delete all but the KEEP_LOGS newest debug logs in `folder` (names sort by time)."""
    names = sorted(n for n in os.listdir(folder) if n.startswith("debug-") and n.endswith(".log"))
    for name in names[:-KEEP_LOGS]:
        try:
            os.remove(os.path.join(folder, name))
        except OSError:
            pass
