"""The figures of a ``bench.fanout`` run: the client processes' results merged, the send
phase's CPU per process, the checks that make a run valid, and the printed report."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
from collections import Counter
from types import ModuleType
from typing import TYPE_CHECKING, Any

from hdrh.histogram import HdrHistogram

from bench.common import fmt, machine_facts, new_hist, percentiles_ms, timeline_pct
from bench.fanout_client import ERROR_SAMPLES

if TYPE_CHECKING:
    from bench.fanout import SendPhase

uvloop: ModuleType | None
try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a project dependency
    uvloop = None

LAG_P99_LIMIT_MS = 5.0
GENERATOR_CPU_LIMIT_PCT = 90.0
TIMELINE_EVERY_S = 0.5


def proc_table(
    before: dict[str, tuple[str, int]],
    after: dict[str, tuple[str, int]],
    seconds: float,
    watched: set[int],
    generators: set[int],
) -> list[dict[str, Any]]:
    hz = os.sysconf("SC_CLK_TCK")
    rows: list[dict[str, Any]] = []
    for pid, (name, ticks) in after.items():
        pct = (ticks - before.get(pid, (name, 0))[1]) / hz / seconds * 100
        ipid = int(pid)
        if pct >= 0.5 or ipid in watched:
            role = "watched" if ipid in watched else ("generator" if ipid in generators else "")
            rows.append({"pid": ipid, "name": name, "role": role, "cpu_pct": round(pct, 1)})
    return sorted(rows, key=lambda r: -float(r["cpu_pct"]))[:20]


def _merged(
    results: list[dict[str, Any]], sp: SendPhase
) -> tuple[HdrHistogram, Counter[str], dict[int, list[int]], list[str]]:
    """The clients' latency histograms, counts, per-message deliveries and samples, merged."""
    hist = new_hist()
    counts: Counter[str] = Counter()
    per_seq: dict[int, list[int]] = {}
    samples: list[str] = list(sp.samples)
    for r in results:
        hist.decode_and_add(r["hist"])
        counts.update(r["counts"])
        samples.extend(r["samples"])
        for seq, (n, first, last) in r["per_seq"].items():
            e = per_seq.setdefault(seq, [0, first, last])
            e[0] += n
            e[1], e[2] = min(e[1], first), max(e[2], last)
    return hist, counts, per_seq, samples


def _per_message(
    per_seq: dict[int, list[int]], sp: SendPhase, rate: float, opened: int
) -> tuple[list[float], list[float], int]:
    """Each sent message's first- and last-member time (ms after its intended send) and how many
    messages did not reach every open socket."""
    interval_ns = 1e9 / rate
    last_member_ms, first_member_ms, incomplete = [], [], 0
    for seq in range(sp.sent):
        got = per_seq.get(seq)
        if got is None:
            incomplete += 1
            continue
        at = sp.t0_ns + int(seq * interval_ns)
        first_member_ms.append((got[1] - at) / 1e6)
        last_member_ms.append((got[2] - at) / 1e6)
        if got[0] < opened:
            incomplete += 1
    return first_member_ms, last_member_ms, incomplete


def _invalid_reasons(
    lag_ms: dict[str, float | None],
    gen_cpu: list[float | None],
    parent_cpu: float,
    sp: SendPhase,
    opened: int,
) -> list[str]:
    reasons = []
    if (lag_ms["p99"] or 0.0) > LAG_P99_LIMIT_MS:
        reasons.append(f"sender lag P99 {lag_ms['p99']:.1f} ms > {LAG_P99_LIMIT_MS:g} ms")
    busiest = max([c or 0.0 for c in gen_cpu] + [parent_cpu])
    if busiest > GENERATOR_CPU_LIMIT_PCT:
        reasons.append(f"a generator process used {busiest:.0f}% > {GENERATOR_CPU_LIMIT_PCT:g}% of a core")
    if sp.probe_all_s is None:
        reasons.append(f"probe reached only {sp.probe_count}/{opened} sockets")
    return reasons


def _pcts(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "max": None}
    s = sorted(values)
    return {"p50": round(s[(len(s) - 1) // 2], 1), "max": round(s[-1], 1)}


def _setup(
    args: argparse.Namespace, out: dict[str, Any], started: dt.datetime, calib_us: float
) -> dict[str, Any]:
    """The machine, the configuration and the group."""
    return {
        "date": started.isoformat(timespec="seconds"),
        "machine": {
            **machine_facts(calib_us),
            "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            "loop": "uvloop" if uvloop is not None else "asyncio",
        },
        "config": {
            "members": args.members,
            "online": out["online"],
            "processes": out["processes"],
            "rate": args.rate,
            "messages": args.messages,
            "body_bytes": args.body_bytes,
            "url": args.url,
            "connect_concurrency": args.connect_concurrency,
            "settle_s": args.settle,
            "tail_s": args.tail,
            "gateway_workers": args.gateway_workers,
        },
        "run_id": out["run_id"],
        "conversation_id": out["cid"],
        "member_count": out["member_count"],
        "setup_s": round(out["setup_s"], 2),
    }


def _connect(out: dict[str, Any], opened: int, counts: Counter[str]) -> dict[str, Any]:
    results: list[dict[str, Any]] = out["results"]
    connect_hist = new_hist()
    for r in out["ready"].values():
        connect_hist.decode_and_add(r["connect_hist"])
    return {
        "opened": opened,
        "failed": out["online"] - opened,
        "ramp_s": round(out["ramp_s"], 2),
        "per_process_s": [round(r["connect_s"], 2) for r in results],
        "rate_per_s": round(opened / out["ramp_s"], 1) if out["ramp_s"] else None,
        "handshake_ms": percentiles_ms(connect_hist, (50, 99)),
        "connect_errors": counts["connect_errors"],
        "listen_overflows": out["listen_overflows"],
    }


def _sockets(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Sockets by how many measured messages they got, a few that got fewest, and a few the
    probe never reached."""
    by_messages: Counter[int] = Counter()
    for r in results:
        by_messages.update({int(n): c for n, c in r["sockets_by_messages"].items()})
    fewest = min(by_messages, default=0)
    fewest_users = [u for r in results for u in r["fewest_users"] if r["sockets_by_messages"].get(fewest)][:5]
    return {
        # measured messages each socket got: {messages: sockets}
        "sockets_by_messages": dict(sorted(by_messages.items())),
        "fewest_users": fewest_users,
        "no_probe_users": [u for r in results for u in r["no_probe_users"]][:5],
    }


def _cpu(
    sp: SendPhase, results: list[dict[str, Any]], out: dict[str, Any], watched: set[int], wall_s: float
) -> dict[str, Any]:
    """CPU over the send phase: the generator's processes, the machine, every busy process."""
    b0, j0 = sp.marks["jiffies0"]
    b1, j1 = sp.marks["jiffies1"]
    names = {int(pid): name for pid, (name, _) in sp.marks["procs1"].items()}
    procs = proc_table(sp.marks["procs0"], sp.marks["procs1"], wall_s, watched, out["generator_pids"])
    by_name: Counter[str] = Counter()
    for row in procs:
        by_name[row["name"].removesuffix(" (new)")] += row["cpu_pct"]
    return {
        "generator_cpu_pct": {
            "sender (parent)": round(_parent_cpu(sp, wall_s), 1),
            "clients": [None if c is None else round(c, 1) for c in (r["send_cpu_pct"] for r in results)],
        },
        "client_cpu_total_s": [round(r["cpu_total_s"], 1) for r in results],
        "client_max_rss_mib": [round(r["max_rss_mib"]) for r in results],
        "machine_busy_pct": round((b1 - b0) / max(j1 - j0, 1) * 100, 1),
        "cpu_by_name_pct": {k: round(v, 1) for k, v in by_name.most_common()},
        "proc_cpu_pct": procs,
        # % of a core per TIMELINE_EVERY_S over the send phase, watched and generator processes
        "cpu_timeline": {
            f"{names.get(pid, '?')} [{pid}]": series
            for pid, series in timeline_pct(sp.timeline).items()
            if sum(series) >= len(series)
        },
    }


def _parent_cpu(sp: SendPhase, wall_s: float) -> float:
    return (sp.marks["cpu1"] - sp.marks["cpu0"]) / wall_s * 100 if wall_s else 0.0


def summarize(
    args: argparse.Namespace,
    out: dict[str, Any],
    started: dt.datetime,
    calib_us: float,
    watched: set[int],
) -> dict[str, Any]:
    sp: SendPhase = out["send"]
    results: list[dict[str, Any]] = out["results"]
    hist, counts, per_seq, samples = _merged(results, sp)
    opened = sum(r["opened"] for r in results)
    received = sum(r["received"] for r in results)
    expected_open = opened * sp.sent
    first_member_ms, last_member_ms, incomplete = _per_message(per_seq, sp, args.rate, opened)
    last_rx = max((r["last_rx_ns"] for r in results), default=0)
    span_s = (last_rx - sp.t0_ns) / 1e9 if last_rx > sp.t0_ns else 0.0
    wall_s = (sp.marks["wall1"] - sp.marks["wall0"]) / 1e9
    lag_ms = percentiles_ms(sp.lag, (50, 99))
    gen_cpu = [r["send_cpu_pct"] for r in results]
    reasons = _invalid_reasons(lag_ms, gen_cpu, _parent_cpu(sp, wall_s), sp, opened)
    sockets = _sockets(results)
    return {
        **_setup(args, out, started, calib_us),
        "connect": _connect(out, opened, counts),
        "probe_all_s": None if sp.probe_all_s is None else round(sp.probe_all_s, 3),
        "sent": sp.sent,
        "acked": sp.acked,
        "sender_echo": sp.echo,
        "sender_errors": sp.errors,
        "expected": out["online"] * args.messages,
        "expected_open": expected_open,
        "received": received,
        "missing": max(expected_open - received, 0),
        "duplicates": counts["duplicates"],
        "closed_early": counts["closed_early"],
        "incomplete_messages": incomplete,
        "sockets_by_messages": sockets["sockets_by_messages"],
        "fewest_users": sockets["fewest_users"],
        "probes_sent": sp.probes_sent,
        "no_probe_users": sockets["no_probe_users"],
        "latency_ms": percentiles_ms(hist, (50, 90, 99, 99.9)),
        "last_member_ms": _pcts(last_member_ms),
        "first_member_ms": _pcts(first_member_ms),
        "last_member_ms_each": [round(x) for x in last_member_ms],
        "send_ack_ms": percentiles_ms(sp.ack, (50, 99)),
        "sender_lag_ms": lag_ms,
        "span_s": round(span_s, 3),
        "sustained_deliveries_per_s": round(received / span_s, 1) if span_s else None,
        "offered_deliveries_per_s": round(opened * args.rate, 1),
        "stop_reason": sp.stop_reason,
        "send_window_s": round(wall_s, 2),
        **_cpu(sp, results, out, watched, wall_s),
        "counts": dict(sorted(counts.items())),
        "valid": not reasons,
        "invalid_reasons": reasons,
        "samples": samples[:ERROR_SAMPLES],
    }


def report(f: dict[str, Any]) -> None:
    m, c, k = f["machine"], f["config"], f["connect"]
    lines = [
        f"fanout  {f['date']}  {m['nproc']} CPUs  {m['cpu_model']}  {m['mem_gib']} GiB  "
        f"calibration sum(range(1000)) {m['cpu_calibration_us']} µs  nofile {m['nofile']}  {m['loop']}",
        f"config  members {c['members']}  online {c['online']}  processes {c['processes']}  "
        f"rate {c['rate']:g}/s  messages {c['messages']}  body {c['body_bytes']} B  {c['url']}"
        + (f"  gateway workers {c['gateway_workers']}" if c["gateway_workers"] else ""),
        f"group   {f['conversation_id']}  member_count {f['member_count']}  set up in {f['setup_s']} s",
        f"connect {k['opened']} opened, {k['failed']} failed ({k['connect_errors']} connect errors) in "
        f"{k['ramp_s']} s ({k['rate_per_s']}/s; per process {k['per_process_s']} s);  "
        f"handshake ms {fmt(k['handshake_ms'])};  listen overflows {k['listen_overflows']}",
        f"probe   {f['probes_sent']} probes (1/s) reached every open socket in {f['probe_all_s']} s"
        + (f"; never reached: {f['no_probe_users']}" if f["no_probe_users"] else ""),
        f"sent    {f['sent']}  acked {f['acked']}  sender echo {f['sender_echo']}  "
        f"sender errors {f['sender_errors']};  stop: {f['stop_reason']}",
        f"deliver expected {f['expected']} (open sockets x sent: {f['expected_open']})  received "
        f"{f['received']}  missing {f['missing']}  duplicates {f['duplicates']}  closed early "
        f"{f['closed_early']}  incomplete messages {f['incomplete_messages']}",
        f"sockets by measured messages received: {f['sockets_by_messages']}"
        + (f"; fewest: {f['fewest_users']}" if len(f["sockets_by_messages"]) > 1 else ""),
        f"latency ms (all deliveries)   {fmt(f['latency_ms'])}",
        f"last member ms (per message)  {fmt(f['last_member_ms'])};  first member "
        f"{fmt(f['first_member_ms'])}",
        "last member ms, each message: " + " ".join(map(str, f["last_member_ms_each"])),
        f"send->ack ms {fmt(f['send_ack_ms'])};  sender lag ms {fmt(f['sender_lag_ms'])}",
        f"sustained {f['sustained_deliveries_per_s']} deliveries/s over {f['span_s']} s "
        f"(offered {f['offered_deliveries_per_s']}/s)",
        f"generator CPU (send phase, % of a core): sender {f['generator_cpu_pct']['sender (parent)']}%, "
        f"clients {f['generator_cpu_pct']['clients']};  client RSS MiB {f['client_max_rss_mib']}",
        f"machine {f['machine_busy_pct']}% of all CPUs busy over the {f['send_window_s']} s send phase; "
        "by process name (% of a core): " + ", ".join(f"{n} {v}" for n, v in f["cpu_by_name_pct"].items()),
    ]
    lines.extend(
        f"        {p['cpu_pct']:6.1f}  {p['name']} [{p['pid']}]{' ' + p['role'] if p['role'] else ''}"
        for p in f["proc_cpu_pct"]
    )
    lines.append(f"CPU timeline (% of a core every {TIMELINE_EVERY_S:g} s of the send phase):")
    lines.extend(f"        {name}: {' '.join(map(str, v))}" for name, v in f["cpu_timeline"].items())
    shown = ("duplicates", "closed_early", "connect_errors")
    other = {n: v for n, v in f["counts"].items() if n not in shown}
    if other:
        lines.append(f"frames  {other}")
    lines.extend(f"sample  {s}" for s in f["samples"])
    lines.append("VALID" if f["valid"] else "INVALID: " + "; ".join(f["invalid_reasons"]))
    print("\n".join(lines))
