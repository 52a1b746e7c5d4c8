"""Progress of uploads and evaluations: a tqdm bar (tqdm.auto, so it renders in notebooks too)
when tqdm is installed, else one line on stderr rewritten in place (or, when stderr is not a
terminal, a line per stage). ``progress=False`` turns both off."""

import sys
import time


def _tqdm():
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm


def _size(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024.0


class _Plain:
    """A stand-in for tqdm: one stderr line."""

    def __init__(self, desc, total, unit, stream=None):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.desc, self.total, self.unit, self.n = desc, total, unit, 0
        self.last = 0.0
        self.width = 0
        self.shown_desc = None

    def _text(self):
        if self.unit == "B":
            done = "%s/%s" % (_size(self.n), _size(self.total or 0))
        else:
            done = "%d/%d" % (self.n, self.total or 0)
        pct = " (%3.0f%%)" % (100.0 * self.n / self.total) if self.total else ""
        return "[rfb] %s: %s%s" % (self.desc, done, pct)

    def show(self, force=False):
        now = time.monotonic()
        if self.tty:
            if force or now - self.last > 0.1:
                text = self._text()
                self.stream.write("\r" + text.ljust(self.width))
                self.width = max(self.width, len(text))
                self.stream.flush()
                self.last = now
        elif self.desc != self.shown_desc or force:
            self.stream.write(self._text() + "\n")
            self.stream.flush()
            self.shown_desc = self.desc

    def update(self, n):
        self.n += n
        self.show()

    def set(self, desc, n, total):
        changed = desc != self.desc
        self.desc, self.n, self.total = desc, n, total
        self.show(force=changed and self.tty)

    def close(self):
        if self.tty:
            self.show(force=True)
            self.stream.write("\n")
        elif self.n and self.total and self.n >= self.total:
            self.stream.write(self._text() + "\n")
        self.stream.flush()


class Bar:
    """One progress bar; a no-op when disabled."""

    def __init__(self, enabled, desc, total=None, unit="it"):
        self.bar = None
        self.plain = None
        self.stage = (desc, total)
        if not enabled:
            return
        tqdm = _tqdm()
        if tqdm is not None:
            scale = dict(unit_scale=True, unit_divisor=1024) if unit == "B" else {}
            self.bar = tqdm(total=total, desc=desc, unit=unit, leave=True, dynamic_ncols=True, **scale)
        else:
            self.plain = _Plain(desc, total, unit)

    def update(self, n):
        if self.bar is not None:
            self.bar.update(n)
        elif self.plain is not None:
            self.plain.update(n)

    def set(self, desc, n, total):
        """Moves to stage ``desc`` with ``n`` of ``total`` done."""
        if self.bar is not None:
            if self.stage != (desc, total):
                self.stage = (desc, total)
                self.bar.reset(total=total)
                self.bar.set_description(desc, refresh=False)
            self.bar.n = n
            self.bar.refresh()
        elif self.plain is not None:
            self.plain.set(desc, n, total)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.plain is not None:
            self.plain.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
