"""bench.scaling's arithmetic: CPU per message per process and per role, msgs/s per busy core,
and which process saturates, from an e2e_1to1 result and the pids' labels."""

from bench.scaling import analyse, per_message


def _result(cpu_s: dict[int, float], sent: int = 1000, window: float = 10.0) -> dict[str, object]:
    return {
        "window_s": window,
        "sent": sent,
        "delivered": sent,
        "valid": True,
        "send_deliver_ms": {"p50": 5.0, "p99": 50.0},
        "send_ack_ms": {"p99": 20.0},
        "proc_cpu_s": {str(pid): s for pid, s in cpu_s.items()},
    }


LABELS = {1: "gateway", 2: "gateway2", 3: "deliver", 4: "deliver2", 5: "cassandra", 6: "kafka"}


def test_cpu_is_summed_per_role_and_divided_per_message() -> None:
    # pid 99 (the generator, or someone else's process) has no label and is left out
    s = analyse(2, 100.0, _result({1: 2.0, 2: 1.0, 3: 0.5, 4: 0.5, 5: 4.0, 6: 1.0, 99: 7.0}), LABELS)
    assert s["cpu_ms_per_msg"] == {
        "cassandra": 4.0,
        "deliver": 0.5,
        "deliver2": 0.5,
        "gateway": 2.0,
        "gateway2": 1.0,
        "kafka": 1.0,
    }
    assert s["role_ms_per_msg"] == {"cassandra": 4.0, "deliver": 1.0, "gateway": 3.0, "kafka": 1.0}
    assert s["tidings_ms_per_msg"] == 4.0 and s["services_ms_per_msg"] == 5.0
    # 100 msgs/s on 0.4 cores of Tidings processes; 0.9 cores with the services
    assert s["tidings_cores"] == 0.4
    assert s["msgs_per_core_tidings"] == 250.0
    assert s["msgs_per_core_all"] == 111.1
    assert s["busiest"] == {"process": "cassandra", "core_pct": 40.0} and not s["saturated"]


def test_a_process_near_a_whole_core_saturates() -> None:
    s = analyse(1, 100.0, _result({1: 9.0, 3: 1.0}), LABELS)
    assert s["busiest"] == {"process": "gateway", "core_pct": 90.0} and s["saturated"]


def test_counters_per_message_leave_out_what_did_not_move() -> None:
    before = {"messages": 10, "receipts": 4, "presence": 7}
    after = {"messages": 110, "receipts": 54, "presence": 7, "inbox": 200}
    assert per_message(before, after, 100) == {"inbox": 2.0, "messages": 1.0, "receipts": 0.5}
