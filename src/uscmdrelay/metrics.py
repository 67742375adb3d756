"""The server's metrics, rendered in the Prometheus text exposition format (version
0.0.4, what node_exporter's textfile collector reads).

Sans-IO: counters, gauges and histograms held in memory, and `render()` to text.
`metrics_file` writes that text to disk; the server and the dispatcher only call the
`RelayMetrics` hooks. A label value is a configured name or a fixed word, never a string
a client sent: a client must not be able to grow the number of series (CONVENTIONS #18).
"""

PREFIX = "uscmdrelay_"
# Command run time, in seconds: from a `true` (milliseconds) to an hour-long backup.
DURATION_BUCKETS_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                            10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
# The cluster and command labels of requests that name no configured one.
UNKNOWN = "unknown"  # a cluster or command the configuration does not have
NONE = "none"  # refused before it was parsed (2001, 2005, 2006, 3004), or `::list`
SERVER_BUSY = 3004  # codes.SERVER_BUSY (codes reaches no IO either, but one less edge)
RELOAD_RESULTS = ("success", "failure")


def escape_label_value(value):
    """`value` as it goes between the quotes of a label: backslash, double quote and
    line feed escaped, as the exposition format says."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text):
    """`text` as it goes on a HELP line: backslash and line feed escaped."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value):
    """A sample value: an integer as such, a float in Python's repr, ±Inf and NaN as
    Prometheus spells them."""
    if isinstance(value, int):
        return str(value)
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _labels(names, values, extra=()):
    pairs = list(zip(names, values)) + list(extra)
    if not pairs:
        return ""
    return "{%s}" % ",".join('%s="%s"' % (name, escape_label_value(str(value)))
                             for name, value in pairs)


class _Family(object):
    """One metric: its name, HELP text, TYPE and label names; samples by label values."""

    kind = None

    def __init__(self, name, help, labels=()):
        self.name = PREFIX + name
        self.help = help
        self.label_names = tuple(labels)
        self.values = {}  # label values (a tuple) -> value

    def render(self, lines):
        lines.append("# HELP %s %s" % (self.name, escape_help(self.help)))
        lines.append("# TYPE %s %s" % (self.name, self.kind))
        for key in sorted(self.values):
            self._render_one(lines, key, self.values[key])

    def _render_one(self, lines, key, value):
        lines.append("%s%s %s" % (self.name, _labels(self.label_names, key),
                                  format_value(value)))


class Counter(_Family):
    kind = "counter"

    def inc(self, *labels):
        self.values[labels] = self.values.get(labels, 0) + 1


class Gauge(_Family):
    kind = "gauge"

    def set(self, value, *labels):
        self.values[labels] = value


class Histogram(_Family):
    """Cumulative buckets (`le`), `_sum` and `_count` per label values."""

    kind = "histogram"

    def __init__(self, name, help, labels=(), buckets=DURATION_BUCKETS_SECONDS):
        _Family.__init__(self, name, help, labels)
        self.buckets = tuple(buckets)

    def observe(self, value, *labels):
        entry = self.values.get(labels)
        if entry is None:
            entry = self.values[labels] = [[0] * len(self.buckets), 0.0, 0]
        counts = entry[0]
        for index, bound in enumerate(self.buckets):
            if value <= bound:
                counts[index] += 1
                break
        entry[1] += value
        entry[2] += 1

    def _render_one(self, lines, key, entry):
        counts, total, count = entry
        cumulative = 0
        for bound, bucket in zip(self.buckets, counts):
            cumulative += bucket
            lines.append("%s_bucket%s %d" % (self.name, _labels(
                self.label_names, key, [("le", format_value(float(bound)))]), cumulative))
        lines.append("%s_bucket%s %d" % (self.name, _labels(
            self.label_names, key, [("le", "+Inf")]), count))
        lines.append("%s_sum%s %s" % (self.name, _labels(self.label_names, key),
                                      format_value(float(total))))
        lines.append("%s_count%s %d" % (self.name, _labels(self.label_names, key), count))


class RelayMetrics(object):
    """What the server counts. `config` (the configuration in force, set again by each
    reload) decides which cluster and command names are real, hence may be labels.
    `sample()` returns (open connections, commands running), read at each render."""

    def __init__(self, config, start_time, version, python, implementation,
                 sample=None):
        self.config = config
        self.sample = sample
        self.requests = Counter("requests_total", "Requests answered, by cluster, "
                                "command and reply code.", ("cluster", "command", "code"))
        self.duration = Histogram("command_duration_seconds", "Run time of the commands "
                                  "that ran, by cluster and command.",
                                  ("cluster", "command"))
        self.running = Gauge("commands_running", "Commands running now.")
        self.connections = Gauge("connections_open", "Client connections open now.")
        self.rejected = Counter("connections_rejected_total", "Connections refused with "
                                "code 3004 (a connection limit, or the server stopping).")
        self.reloads = Counter("config_reloads_total", "Reloads (SIGHUP) by result.",
                               ("result",))
        self.last_reload = Gauge("config_last_reload_success_timestamp_seconds",
                                 "When the configuration in force was loaded, in Unix "
                                 "time.")
        self.start = Gauge("start_time_seconds", "When the server started, in Unix time.")
        self.build = Gauge("build_info", "Always 1: the version of uscmdrelay and of the "
                           "Python running it.", ("version", "python",
                                                  "python_implementation"))
        self.rejected.values[()] = 0
        for result in RELOAD_RESULTS:
            self.reloads.values[(result,)] = 0
        self.running.set(0)
        self.connections.set(0)
        self.last_reload.set(start_time)
        self.start.set(start_time)
        self.build.set(1, version, python, implementation)
        self._families = (self.requests, self.duration, self.running, self.connections,
                          self.rejected, self.reloads, self.last_reload, self.start,
                          self.build)

    def request_done(self, request, code, outcome=None):
        """Counts one audited request: `request` (None when refused before it was
        parsed), its reply `code`, and the `outcome` of its command if it ran."""
        cluster, command = self.names(request)
        self.requests.inc(cluster, command, str(code))
        if outcome is not None:
            self.duration.observe(outcome.duration_ms / 1000.0, cluster, command)
        if code == SERVER_BUSY:
            self.rejected.inc()

    def names(self, request):
        """(cluster, command) labels of `request`: configured names, or UNKNOWN/NONE."""
        if request is None:
            return NONE, NONE
        if request.cluster is None:
            return NONE, request.command  # ::list, a constant
        commands = self.config.clusters.get(request.cluster)
        if commands is None:
            return UNKNOWN, UNKNOWN
        if request.name not in commands:
            return request.cluster, UNKNOWN
        return request.cluster, request.name

    def reloaded(self, config, now):
        """A reload succeeded (`config` is now in force, since `now`) or, with `config`
        None, was refused."""
        if config is None:
            self.reloads.inc("failure")
            return
        self.reloads.inc("success")
        self.config = config
        self.last_reload.set(now)

    def render(self):
        """The exposition text of every metric, ending with a line feed."""
        if self.sample is not None:
            connections, running = self.sample()
            self.connections.set(connections)
            self.running.set(running)
        lines = []
        for family in self._families:
            family.render(lines)
        return "\n".join(lines) + "\n"
