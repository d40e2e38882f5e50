"""The ``tidings`` command line."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from tidings.archive_cli import archive_app, replay_app, verify_cmd
from tidings.keyspaces import with_active_keyspace
from tidings.media_cli import media_app
from tidings.settings import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Tidings: event-sourced chat backend.")
services_app = typer.Typer(no_args_is_help=True, help="Local Kafka, Cassandra and Redis.")
app.add_typer(services_app, name="services")
app.add_typer(archive_app, name="archive")
app.add_typer(replay_app, name="replay")
app.add_typer(media_app, name="media")
app.command("verify")(verify_cmd)

ROOT = Path(__file__).resolve().parent.parent


def _settings() -> Settings:
    return with_active_keyspace(Settings())


ClusterFlag = Annotated[
    bool, typer.Option("--cluster", help="the cluster profile: 3 Kafka brokers, 3 Cassandra nodes, HAProxy")
]


@services_app.command("up")
def services_up(cluster: ClusterFlag = False) -> None:
    """Start the services (installing and downloading what is missing); reuse running ones."""
    from tidings import services
    from tidings.services import cluster as profile

    services.ensure_system_packages(haproxy=cluster)
    settings = _settings()
    statuses = profile.up(profile.cluster_settings(settings)) if cluster else services.up(settings)
    for s in statuses:
        typer.echo(f"{s.name:10} {s.host}:{s.port}  {'started' if s.started_by_us else 'running'}")


@services_app.command("down")
def services_down(cluster: ClusterFlag = False) -> None:
    """Stop the services that `tidings services up` started."""
    from tidings import services
    from tidings.services import cluster as profile

    if cluster:
        profile.down(profile.cluster_settings(_settings()))
    else:
        services.down(_settings())


@services_app.command("status")
def services_status(cluster: ClusterFlag = False) -> None:
    """Show each service, its port and whether it answers."""
    from tidings import services
    from tidings.services import cluster as profile

    settings = _settings()
    statuses = profile.status(profile.cluster_settings(settings)) if cluster else services.status(settings)
    for s in statuses:
        state = "running" if s.running else "stopped"
        typer.echo(f"{s.name:10} {s.host}:{s.port}  {state:8} pid={s.pid or '-'}  {s.detail}")


@app.command()
def migrate() -> None:
    """Create the Kafka topics and the Cassandra keyspace and tables (idempotent)."""
    from tidings.migrate import migrate as run

    asyncio.run(run(_settings()))


@app.command()
def gateway() -> None:
    """Run the WebSocket/HTTP gateway (TIDINGS_HTTP_PORT, TIDINGS_GATEWAY_WORKERS)."""
    from tidings.gateway import run_gateway

    run_gateway(_settings())


@app.command()
def worker(
    role: Annotated[
        str,
        typer.Option(
            help="all | deliver (hot cache, pushes) | persist (Cassandra) | notify, push (offline push)"
            " | search (index shards)"
        ),
    ] = "",
) -> None:
    """Run a Faust projector worker (TIDINGS_WORKER_ROLE, or --role)."""
    from tidings.worker import run_worker

    settings = _settings()
    if role:
        if role not in ("all", "deliver", "persist", "notify", "push", "search"):
            raise typer.BadParameter("role is all, deliver, persist, notify, push or search")
        settings = settings.model_copy(update={"worker_role": role})
    run_worker(settings)


@app.command()
def token(
    user: str,
    device: Annotated[str, typer.Option(help="device id (claim dev)")] = "default",
    ttl: Annotated[int, typer.Option(help="lifetime in seconds")] = 24 * 3600,
) -> None:
    """Print a client token for USER, signed with the gateway's secret."""
    from query_api.auth import issue_token

    try:
        typer.echo(issue_token(_settings().resolved_auth_secret(), user, device_id=device, ttl_s=ttl))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


@app.command()
def chat(
    user: str,
    to: Annotated[str, typer.Option(help="start in the direct conversation with this user")] = "",
    device: Annotated[str, typer.Option(help="device id (claim dev)")] = "chat",
    url: Annotated[str, typer.Option(help="gateway base URL (default: this machine's gateway)")] = "",
) -> None:
    """A small terminal chat as USER on the Python SDK (client/): try it in two terminals."""
    try:
        from tidings_client.chat import run_chat
    except ImportError as exc:  # an image built without the SDK
        raise typer.BadParameter("the Python SDK is not installed here: pip install ./client") from exc

    from query_api.auth import issue_token

    settings = _settings()
    token = issue_token(settings.resolved_auth_secret(), user, device_id=device, ttl_s=24 * 3600)
    base = url or f"http://{settings.http_host}:{settings.http_port}"
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_chat(base, token, to=to or None))


@app.command()
def up(
    cluster: ClusterFlag = False,
    gateways: Annotated[int, typer.Option(help="gateways behind HAProxy (with --cluster)", min=1)] = 2,
) -> None:
    """Services, migrations, a gateway and a worker in one command; Ctrl-C stops what it started.
    With --cluster: the cluster profile, N gateways behind HAProxy and two workers per role."""
    from tidings import processes, services
    from tidings.migrate import migrate as run_migrations
    from tidings.services import cluster as profile

    settings = _settings()
    started_at = time.monotonic()
    services.ensure_system_packages(haproxy=cluster)
    if cluster:
        settings = profile.cluster_settings(settings)
        statuses = profile.up(settings, gateways=gateways)
    else:
        statuses = services.up(settings)
    ours = [s.name for s in statuses if s.started_by_us]
    children: list[subprocess.Popen[bytes]] = []
    try:
        asyncio.run(run_migrations(settings))
        env = {**os.environ, "TIDINGS_AUTH_SECRET": settings.resolved_auth_secret()}
        # The web client's development sign-in (query_api.web): local use only, never production.
        env.setdefault("TIDINGS_DEV_LOGIN", "true")
        if cluster:
            env.update(profile.cluster_env(settings))
            extra = profile.app_processes(gateways)
        else:
            metrics_port = settings.worker_web_port
            extra = {
                "deliver": {"TIDINGS_WORKER_WEB_PORT": str(metrics_port)},
                "persist": {"TIDINGS_WORKER_WEB_PORT": str(metrics_port + 1)},
                "notify": {"TIDINGS_WORKER_WEB_PORT": str(metrics_port + 2)},
                "push": {"TIDINGS_WORKER_WEB_PORT": str(metrics_port + 3)},
                "search": {"TIDINGS_WORKER_WEB_PORT": str(metrics_port + 4)},
                "gateway": {},
            }
        started = {name: processes.spawn(name, {**env, **more}) for name, more in extra.items()}
        children += started.values()
        url = f"http://{settings.http_host}:{settings.http_port}"
        try:
            processes.wait_ready(f"{url}/readyz", started, timeout_s=120 if cluster else 60)
            # A message sent before the delivery group reads would be stored but not pushed live.
            readers = {
                name: int(more["TIDINGS_WORKER_WEB_PORT"])
                for name, more in extra.items()
                if "TIDINGS_WORKER_WEB_PORT" in more
            }
            processes.wait_reading(readers, started, timeout_s=120 if cluster else 60)
        except (processes.Exited, TimeoutError) as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(1) from exc
        where = "HAProxy" if cluster else "the gateway"
        typer.echo(
            f"\nTidings is up in {time.monotonic() - started_at:.1f}s; connect to {where}:\n"
            f"  WebSocket  ws://{settings.http_host}:{settings.http_port}/v1/ws?token=<token>\n"
            f"  HTTP       {url}/v1/...   metrics {url}/metrics\n"
            f"  web client {url}/   API description {url}/v1/openapi.json\n"
            f"  media      {settings.s3_endpoint_url}/{settings.s3_bucket} (S3; docs/media.md)\n"
            f"  a token    python3 -m tidings token alice\n"
            + (
                f"  HAProxy    stats http://{settings.http_host}:{profile.HAPROXY_STATS_PORT}/stats, "
                f"metrics /metrics; gateways on {', '.join(map(str, profile.gateway_ports(gateways)))}\n"
                f"  Kafka      {settings.kafka_bootstrap}\n"
                f"  Cassandra  {', '.join(settings.cassandra_hosts)} port {settings.cassandra_port} "
                f"({settings.cassandra_consistency})\n"
                if cluster
                else ""
            )
            + "Ctrl-C stops everything this command started."
        )
        signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as cleanly as Ctrl-C
        while all(c.poll() is None for c in children):
            time.sleep(0.5)
        typer.echo("a Tidings process exited; stopping", err=True)
    except KeyboardInterrupt:
        typer.echo("\nstopping")
    finally:
        processes.stop(children)
        if ours:
            if cluster:
                profile.down(settings, only=ours)
            else:
                services.down(settings, only=ours)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def test(ctx: typer.Context, cluster: ClusterFlag = False) -> None:  # noqa: PT028 - a command, not a test
    """Lint, type-check, then run the whole test suite against real services (started if
    needed, stopped after). Extra arguments go to pytest. With --cluster: only the cluster tier
    (tests/cluster), which starts the cluster profile's services itself."""
    from tidings import services

    started_at = time.monotonic()
    if cluster:
        services.ensure_system_packages(haproxy=True)
        env = {**os.environ, "TIDINGS_RUN_CLUSTER": "1"}
        argv = [sys.executable, "-m", "pytest", "tests/cluster", *ctx.args]
        code = subprocess.call(argv, cwd=ROOT, env=env)
        minutes, seconds = divmod(time.monotonic() - started_at, 60)
        typer.echo(f"cluster tier took {int(minutes)}m{seconds:04.1f}s (services included)")
        raise typer.Exit(code)
    for check in (["ruff", "check", "."], ["mypy"]):
        if subprocess.call([sys.executable, "-m", *check], cwd=ROOT) != 0:
            typer.echo(f"{check[0]} failed", err=True)
            raise typer.Exit(1)
    settings = _settings()
    # The web client's tests need chromium; the alert rules' tests promtool; HAProxy's, haproxy.
    services.ensure_system_packages(browser=True, promtool=True, haproxy=True)
    ours = [s.name for s in services.up(settings) if s.started_by_us]
    code = 1
    try:
        code = subprocess.call([sys.executable, "-m", "pytest", *ctx.args], cwd=ROOT)
    finally:
        if ours:
            services.down(settings, only=ours)
    minutes, seconds = divmod(time.monotonic() - started_at, 60)
    typer.echo(f"test suite took {int(minutes)}m{seconds:04.1f}s (services included)")
    raise typer.Exit(code)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def faults(ctx: typer.Context, cluster: ClusterFlag = False) -> None:
    """The fault suite (tests/faults): Kafka, Cassandra and Redis instances of its own on other
    ports, stopped and restarted on purpose under load; several minutes. With --cluster: the
    fault suite on the cluster profile (tests/cluster_faults: a broker, a Cassandra node, a Redis
    master, a gateway, a worker of each role killed -9, a rolling restart of the gateways), which starts
    the profile's services itself when they are not running. Extra arguments go to pytest."""
    from tidings import services

    started_at = time.monotonic()
    services.ensure_system_packages(haproxy=cluster)
    folder, flag = (
        ("tests/cluster_faults", "TIDINGS_RUN_CLUSTER_FAULTS")
        if cluster
        else ("tests/faults", "TIDINGS_RUN_FAULTS")
    )
    env = {**os.environ, flag: "1"}
    # Without hypothesis' plugin (the fault suites use none of it): at the session's end it
    # imports a module through pytest's assertion rewriting while the suite's threads may still
    # parse, and CPython 3.11's AST recursion counter, shared by threads, then raised
    # "SystemError: AST constructor recursion depth mismatch" after every scenario had passed.
    argv = [sys.executable, "-m", "pytest", "-p", "no:hypothesispytest", folder, *ctx.args]
    code = subprocess.call(argv, cwd=ROOT, env=env)
    minutes, seconds = divmod(time.monotonic() - started_at, 60)
    what = "cluster fault suite" if cluster else "fault suite"
    typer.echo(f"{what} took {int(minutes)}m{seconds:04.1f}s (services included)")
    raise typer.Exit(code)
