"""Draws a session as a tree of text lines, for ``show`` and ``watch``.

Every line fits the given width: long texts are collapsed to one line and
cut. Steps show a status symbol, name, duration, tokens and confidence; an
error, the LLM calls and (by default only warning and worse) the log lines
of a step follow it, indented under it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from processflow.v1 import resources_pb2 as res

MIN_WIDTH = 40


@dataclass(frozen=True)
class Glyphs:
    status: dict[str, str]
    branch: str
    last: str
    pipe: str
    space: str
    ellipsis: str
    rule: str
    call: str
    note: str


UNICODE = Glyphs(
    status={
        "completed": "✓",
        "error": "✗",
        "running": "▶",
        "pending": "○",
        "skipped": "↷",
        "cancelled": "⊘",
        "unspecified": "?",
    },
    branch="├─ ",
    last="└─ ",
    pipe="│  ",
    space="   ",
    ellipsis="…",
    rule="─",
    call="⇢",
    note="!",
)
ASCII = Glyphs(
    status={
        "completed": "+",
        "error": "x",
        "running": ">",
        "pending": ".",
        "skipped": "-",
        "cancelled": "/",
        "unspecified": "?",
    },
    branch="|- ",
    last="`- ",
    pipe="|  ",
    space="   ",
    ellipsis="...",
    rule="-",
    call="~",
    note="!",
)

_SHOWN_LOG_LEVELS = {res.LOG_LEVEL_WARNING, res.LOG_LEVEL_ERROR, res.LOG_LEVEL_CRITICAL}


def glyphs_for(encoding: str | None) -> Glyphs:
    """Unicode glyphs where the output encoding can carry them."""
    try:
        "".join(UNICODE.status.values()).encode(encoding or "ascii")
        (UNICODE.branch + UNICODE.pipe + UNICODE.call).encode(encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return ASCII
    return UNICODE


def step_status(status: res.StepStatus.ValueType) -> str:
    return res.StepStatus.Name(status).removeprefix("STEP_STATUS_").lower()


def session_status(status: res.SessionStatus.ValueType) -> str:
    return res.SessionStatus.Name(status).removeprefix("SESSION_STATUS_").lower()


def flat(text: str) -> str:
    """``text`` with every run of whitespace (newlines too) made one space."""
    return " ".join(text.split())


def fit(text: str, width: int, glyphs: Glyphs = UNICODE) -> str:
    """``text`` cut to ``width`` characters, marked with an ellipsis."""
    if width <= 0:
        return ""
    if len(text) <= width:
        return text
    keep = max(width - len(glyphs.ellipsis), 0)
    return text[:keep] + glyphs.ellipsis[: width - keep]


def one_line(text: str, width: int, glyphs: Glyphs = UNICODE) -> str:
    """``text`` on one line, cut to ``width`` characters."""
    return fit(flat(text), width, glyphs)


def duration(ms: int | float) -> str:
    if ms < 1000:
        return f"{int(ms)} ms"
    if ms < 60_000:
        return f"{ms / 1000:.2f} s"
    minutes, seconds = divmod(int(ms // 1000), 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def cost(usd: float) -> str:
    return f"${usd:.4f}" if usd >= 0.0001 or usd == 0 else f"${usd:.6f}"


def _elapsed_ms(message: res.Step | res.Session, now: dt.datetime) -> int | None:
    if not message.HasField("start_time"):
        return None
    start = message.start_time.ToDatetime()
    end = message.end_time.ToDatetime() if message.HasField("end_time") else now
    return max(int((end - start).total_seconds() * 1000), 0)


def _step_duration(step: res.Step, now: dt.datetime) -> str:
    if step.HasField("duration_ms"):
        return duration(step.duration_ms)
    if step.status == res.STEP_STATUS_RUNNING:
        elapsed = _elapsed_ms(step, now)
        return "" if elapsed is None else duration(elapsed)
    return ""


def render_session(
    session: res.Session,
    *,
    width: int = 80,
    glyphs: Glyphs = UNICODE,
    all_logs: bool = False,
    now: dt.datetime | None = None,
) -> list[str]:
    """The session as lines of at most ``width`` characters (at least 40)."""
    width = max(width, MIN_WIDTH)
    now = now or dt.datetime.now(dt.UTC).replace(tzinfo=None)
    lines = header(session, width, glyphs, now)
    lines.append(glyphs.rule * width)

    calls_by_step: dict[str, list[res.LlmCall]] = {}
    for call in session.llm_calls:
        calls_by_step.setdefault(call.step_id, []).append(call)
    known = set(_step_ids(session.steps))
    view = _TreeView(width, glyphs, calls_by_step, all_logs, now)
    if not session.steps:
        lines.append("(no steps yet)")
    view.steps(session.steps, "", lines)

    loose_calls = [c for c in session.llm_calls if c.step_id not in known]
    session_logs = [g for g in session.logs if all_logs or g.level in _SHOWN_LOG_LEVELS]
    if loose_calls or session_logs:
        lines.append("Session")
        for call in loose_calls:
            lines.append(view.detail("  ", f"{glyphs.call} {call_summary(call)}"))
        for entry in session_logs:
            lines.append(view.detail("  ", log_summary(entry)))
    return lines


def header(
    session: res.Session, width: int, glyphs: Glyphs, now: dt.datetime
) -> list[str]:
    status = session_status(session.status)
    symbol = glyphs.status.get(status, "?")
    elapsed = (
        session.total_duration_ms
        if session.HasField("total_duration_ms")
        else _elapsed_ms(session, now)
    )
    started = (
        session.start_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S UTC")
        if session.HasField("start_time")
        else "not started"
    )
    facts = [f"{symbol} {status}"]
    if elapsed is not None:
        facts.append(duration(elapsed))
    lines = [
        f"Session {session.session_id}  " + "  ".join(facts),
        f"User {flat(session.user_id)}  started {started}",
        f"Query {flat(session.query)}",
    ]
    labels = [
        ("intent", session.intent),
        ("domain", session.domain),
        ("template", session.template),
        ("type", session.query_type),
    ]
    classified = "  ".join(f"{k} {flat(v)}" for k, v in labels if v)
    if classified:
        lines.append(classified)
    lines.append(usage_line(session))
    if session.HasField("coverage"):
        lines.append(coverage_line(session.coverage))
    if session.generated_sql:
        lines.append(f"SQL {flat(session.generated_sql)}")
    if session.error_message:
        lines.append(f"Error {flat(session.error_message)}")
    lines = [fit(line, width, glyphs) for line in lines]
    return lines


def usage_line(session: res.Session) -> str:
    t = session.transparency
    calls = "call" if t.api_call_count == 1 else "calls"
    text = (
        f"Tokens {t.total_tokens:,} ({t.prompt_tokens:,} in / "
        f"{t.completion_tokens:,} out)  cost {cost(t.estimated_cost_usd)}  "
        f"{t.api_call_count} LLM {calls}"
    )
    if session.HasField("overall_confidence"):
        text += f"  confidence {session.overall_confidence:.2f}"
    return text


def coverage_line(coverage: res.Coverage) -> str:
    status = res.CoverageStatus.Name(coverage.status).removeprefix("COVERAGE_STATUS_")
    text = (
        f"Legacy view {status.lower()}: {coverage.applied_events}/"
        f"{coverage.total_events} events applied"
    )
    if coverage.pending_events:
        text += f", {coverage.pending_events} pending"
    if coverage.parked_events:
        text += f", {coverage.parked_events} parked"
    return text


def call_summary(call: res.LlmCall) -> str:
    who = "/".join(flat(p) for p in (call.provider, call.model) if p) or "llm"
    text = (
        f"{who}  {call.input_tokens:,}+{call.output_tokens:,} tok  "
        f"{cost(call.cost_usd)}  {duration(call.duration_ms)}"
    )
    if not call.success:
        text += f"  failed: {flat(call.error_message) or 'no message'}"
    return text


def log_summary(entry: res.LogEntry) -> str:
    level = res.LogLevel.Name(entry.level).removeprefix("LOG_LEVEL_").lower()
    return f"[{level}] {flat(entry.message)}"


def _step_ids(steps: Iterable[res.Step]) -> Iterable[str]:
    for step in steps:
        yield step.step_id
        yield from _step_ids(step.children)


class _TreeView:
    def __init__(
        self,
        width: int,
        glyphs: Glyphs,
        calls_by_step: dict[str, list[res.LlmCall]],
        all_logs: bool,
        now: dt.datetime,
    ) -> None:
        self.width = width
        self.glyphs = glyphs
        self.calls_by_step = calls_by_step
        self.all_logs = all_logs
        self.now = now

    def steps(self, steps: Sequence[res.Step], prefix: str, lines: list[str]) -> None:
        for index, step in enumerate(steps):
            last = index == len(steps) - 1
            branch = self.glyphs.last if last else self.glyphs.branch
            lines.append(self.step_line(step, prefix + branch))
            inner = prefix + (self.glyphs.space if last else self.glyphs.pipe)
            # Details start under the step's name, beside its children's rail.
            rail = inner + (self.glyphs.pipe if step.children else "  ")[:2]
            if step.error_message:
                note = f"{self.glyphs.note} {flat(step.error_message)}"
                lines.append(self.detail(rail, note))
            for call in self.calls_by_step.get(step.step_id, []):
                lines.append(
                    self.detail(rail, f"{self.glyphs.call} {call_summary(call)}")
                )
            for entry in step.logs:
                # The error line above already says what an error log repeats.
                repeated = entry.message == step.error_message
                if (self.all_logs or entry.level in _SHOWN_LOG_LEVELS) and not repeated:
                    lines.append(self.detail(rail, log_summary(entry)))
            self.steps(step.children, inner, lines)

    def step_line(self, step: res.Step, prefix: str) -> str:
        status = step_status(step.status)
        symbol = self.glyphs.status.get(status, "?")
        tokens = f"{step.tokens_used:,} tok" if step.tokens_used else ""
        confidence = f"{step.confidence:.2f}" if step.HasField("confidence") else ""
        right = f" {_step_duration(step, self.now):>9} {tokens:>11} {confidence:>4}"
        left_width = self.width - len(right)
        name = step.name or step.step_type or step.step_id
        left = prefix + one_line(
            f"{symbol} {name}", left_width - len(prefix), self.glyphs
        )
        return (left.ljust(left_width) + right).rstrip()

    def detail(self, rail: str, text: str) -> str:
        return rail + fit(text, self.width - len(rail), self.glyphs)
