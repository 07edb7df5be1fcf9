"""A FAKE of the W&B backend for tests: a small HTTP server on 127.0.0.1 that the real wandb client
(`wandb sweep`, `wandb agent`, `wandb.init` in a run, `wandb sync`) talks to.

A W&B server cannot run on these machines, so this stands in for it. It was written from the
client's behaviour (wandb 0.31.0; see /work/shared/notes/wandb-client-protocol.md) and answers only
what the client needs, by GraphQL operation name (`OPERATIONS` lists them). It is a sweep service
in miniature: it picks each run's parameters with W&B's open-source `sweeps` engine from the
sweep's YAML, feeds it back the metrics the runs stream (history rows via `file_stream`), and issues
hyperband `stop` commands the way the service does. Everything runs send is recorded per run
(`FakeRun.history`, `received`, `summary`, `files`, `preempting`, `exitcode`) for tests to assert on.

What it does not do (the real service decides these): authentication beyond "a key was sent",
rate limits, server-side schema checks beyond the engine's own, the UI.

    backend = FakeWandbBackend().start()
    env = backend.client_env(home)     # HOME, WANDB_CONFIG_DIR, WANDB_API_KEY, WANDB_BASE_URL ...
    ... run `wandb sweep`, `wandb agent` with env ...
    backend.runs_of(sweep_id)          # FakeRun records
    backend.close()
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import secrets
import string
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

ENTITY = "fake-team"
# Any 40 characters: the client only checks the length; the fake only checks that one was sent.
API_KEY = "f" * 40
HISTORY_FILE = "wandb-history.jsonl"
SUMMARY_FILE = "wandb-summary.json"
LIVE_STATES = ("running",)
_ID_ALPHABET = string.ascii_lowercase + string.digits


@dataclasses.dataclass
class FakeRun:
    """One run as the fake service sees it."""

    id: str
    sweep_id: str | None
    project: str
    entity: str = ENTITY
    args: dict[str, Any] = dataclasses.field(default_factory=dict)  # {key: value} handed to the agent
    state: str = "running"  # running | finished | failed | crashed | killed | preempted
    agent_id: str | None = None
    config: dict[str, Any] = dataclasses.field(default_factory=dict)  # as the run reported it (UpsertBucket)
    group: str | None = None  # the W&B group the run reported (UpsertBucket groupName)
    history: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)  # line number -> row
    received: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # every history row, as sent
    received_at: list[float] = dataclasses.field(default_factory=list)  # time.time() of each `received` row
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)
    files: dict[str, bytes] = dataclasses.field(default_factory=dict)  # uploaded run files
    preempting: bool = False
    complete: bool = False
    exitcode: int | None = None
    stop_reason: str | None = None  # "hyperband" or "user": the service asked the agent to stop it
    handed_out: int = 0  # times given to an agent (run + resume commands)
    upserts: int = 0

    def rows(self) -> list[dict[str, Any]]:
        """The history as the service keeps it: one row per line, in line order."""
        return [self.history[line] for line in sorted(self.history)]

    def steps(self) -> list[int]:
        return [int(row["_step"]) for row in self.rows() if "_step" in row]

    def received_steps(self) -> list[int]:
        """`_step` of every history row the service was sent, in arrival order (repeats included)."""
        return [int(row["_step"]) for row in self.received if "_step" in row]

    def metric_history(self, name: str) -> list[float]:
        return [float(row[name]) for row in self.rows() if isinstance(row.get(name), (int, float))]


@dataclasses.dataclass
class FakeSweep:
    id: str
    entity: str
    project: str
    config: dict[str, Any]
    yaml_text: str
    state: str = "RUNNING"
    warnings: list[str] = dataclasses.field(default_factory=list)  # the engine's schema violations
    agents: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # agent id -> its info


class FakeWandbBackend:
    """See the module docstring. Thread-safe: every request handler takes `self.lock`."""

    OPERATIONS = ("Viewer", "UpsertSweep", "SweepWithRuns", "CreateAgent", "Heartbeat", "UpsertBucket",
                  "RunResumeStatus", "CreateRunFiles", "OrganizationCoreWeaveOrganizationID",
                  "ServerFeaturesQuery")

    def __init__(self, entity: str = ENTITY) -> None:
        self.entity = entity
        self.lock = threading.RLock()
        self.sweeps: dict[str, FakeSweep] = {}
        self.runs: dict[str, FakeRun] = {}
        self.operations: list[str] = []  # every GraphQL operation received, in order
        self.unknown_operations: list[str] = []
        self.errors: list[str] = []  # exceptions the fake raised while answering
        self.unauthenticated: list[str] = []  # requests that came without credentials
        # While True every request is answered 503 (the service erroring or down behind its proxy);
        # `refused` counts those answers, so a test can see that clients did try during the outage.
        self.outage = False
        self.refused = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> "FakeWandbBackend":
        backend = self

        class Handler(_Handler):
            fake = backend

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-wandb", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the fake first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def client_env(self, home: Path) -> dict[str, str]:
        """Variables that point the real client at this fake, with its own HOME (no real settings read)."""
        home = Path(home)
        (home / ".config" / "wandb").mkdir(parents=True, exist_ok=True)
        return {
            "HOME": str(home),
            "WANDB_CONFIG_DIR": str(home / ".config" / "wandb"),
            "WANDB_CACHE_DIR": str(home / ".cache" / "wandb"),
            "WANDB_DATA_DIR": str(home / ".local" / "share" / "wandb"),
            "WANDB_API_KEY": API_KEY,
            "WANDB_BASE_URL": self.url,
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            # Stream history every second (default 15 s) so the fake's hyperband sees epochs soon.
            "WANDB_X_FILE_STREAM_TRANSMIT_INTERVAL": "1",
        }

    # -- what tests ask ----------------------------------------------------------------------------
    def runs_of(self, sweep_id: str) -> list[FakeRun]:
        with self.lock:
            return [run for run in self.runs.values() if run.sweep_id == sweep_id]

    def run(self, run_id: str) -> FakeRun:
        with self.lock:
            return self.runs[run_id]

    def stop_run(self, run_id: str) -> None:
        """What the UI's stop button does: the next heartbeat of its agent carries `stop`."""
        with self.lock:
            self.runs[run_id].stop_reason = "user"

    def add_run(self, sweep_id: str, history: list[dict[str, Any]], state: str = "finished",
                args: dict[str, Any] | None = None) -> FakeRun:
        """A run of the sweep from elsewhere (another machine, earlier): it counts for the engine."""
        with self.lock:
            sweep = self.sweeps[sweep_id]
            run = FakeRun(id=_new_id(), sweep_id=sweep_id, project=sweep.project, entity=sweep.entity,
                          args=dict(args or {}), state=state, complete=True, exitcode=0)
            for line, row in enumerate(history):
                run.history[line] = {"_step": line + 1, **row}
            self.runs[run.id] = run
            return run

    # -- GraphQL -----------------------------------------------------------------------------------
    def graphql(self, name: str, variables: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.operations.append(name)
            handler = getattr(self, f"_op_{name}", None)
            if handler is None:
                self.unknown_operations.append(name)
                return {"data": {}}
            try:
                return handler(variables)
            except Exception as error:  # a bug of the fake: keep it for the test to show
                self.errors.append(f"{name}: {type(error).__name__}: {error}")
                raise

    def _project(self, name: str, entity: str | None = None) -> dict[str, Any]:
        entity = entity or self.entity
        return {"id": f"project-{name}", "name": name, "entity": {"id": f"entity-{entity}", "name": entity}}

    def _op_Viewer(self, variables: dict[str, Any]) -> dict[str, Any]:
        return {"data": {"viewer": {"id": "viewer-1", "entity": self.entity, "username": "fake-user",
                                    "email": "fake@example.invalid", "flags": "{}", "admin": False,
                                    "teams": {"edges": []}}}}

    def _op_UpsertSweep(self, variables: dict[str, Any]) -> dict[str, Any]:
        import sweeps

        text = variables.get("config") or ""
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as error:
            return {"errors": [{"message": f"invalid sweep config: {error}"}], "data": None}
        if not isinstance(config, dict) or "method" not in config or not config.get("parameters"):
            return {"errors": [{"message": "sweep config needs method and parameters"}], "data": None}
        warnings = sweeps.schema_violations_from_proposed_config(config)
        project = variables.get("projectName") or config.get("project") or "uncategorized"
        entity = variables.get("entityName") or self.entity
        sweep_id = variables.get("id") or _new_id()
        self.sweeps[sweep_id] = FakeSweep(sweep_id, entity, project, config, text, warnings=list(warnings))
        return {"data": {"upsertSweep": {"sweep": {"id": f"sweep-{sweep_id}", "name": sweep_id,
                                                   "project": self._project(project, entity)},
                                         "configValidationWarnings": warnings}}}

    def _op_SweepWithRuns(self, variables: dict[str, Any]) -> dict[str, Any]:
        sweep = self.sweeps.get(variables.get("sweep") or "")
        if sweep is None:
            return {"data": {"project": {"sweep": None}}}
        return {"data": {"project": {"sweep": {"id": f"sweep-{sweep.id}", "name": sweep.id, "state": sweep.state,
                                               "config": sweep.yaml_text, "runs": {"edges": []}}}}}

    def _op_CreateAgent(self, variables: dict[str, Any]) -> dict[str, Any]:
        sweep_id = variables.get("sweep") or ""
        if sweep_id not in self.sweeps:
            return {"errors": [{"message": f"sweep {sweep_id} not found"}], "data": None}
        agent_id = f"agent-{len(self.sweeps[sweep_id].agents) + 1}-{_new_id()}"
        self.sweeps[sweep_id].agents[agent_id] = {"host": variables.get("host"), "runs": []}
        self._agent_sweep = getattr(self, "_agent_sweep", {})
        self._agent_sweep[agent_id] = sweep_id
        return {"data": {"createAgent": {"agent": {"id": agent_id}}}}

    def _op_Heartbeat(self, variables: dict[str, Any]) -> dict[str, Any]:
        agent_id = variables.get("id") or ""
        sweep = self.sweeps.get(getattr(self, "_agent_sweep", {}).get(agent_id, ""))
        if sweep is None:
            return {"errors": [{"message": f"agent {agent_id} not found"}], "data": None}
        live = json.loads(variables.get("runState") or "{}")
        commands = self._commands(sweep, agent_id, {run_id for run_id, alive in live.items() if alive})
        return {"data": {"agentHeartbeat": {"agent": {"id": agent_id}, "commands": json.dumps(commands)}}}

    def _op_UpsertBucket(self, variables: dict[str, Any]) -> dict[str, Any]:
        run_id = variables.get("name") or variables.get("id") or _new_id()
        project = variables.get("project") or "uncategorized"
        run = self.runs.get(run_id)
        if run is None:
            run = self.runs[run_id] = FakeRun(id=run_id, sweep_id=variables.get("sweep"), project=project,
                                              entity=variables.get("entity") or self.entity)
        run.upserts += 1
        if variables.get("groupName"):
            run.group = variables["groupName"]
        if variables.get("config"):
            run.config = _config_values(json.loads(variables["config"]))
        if variables.get("summaryMetrics"):
            run.summary.update(json.loads(variables["summaryMetrics"]))
        bucket = {"id": f"run-{run_id}", "name": run_id, "displayName": run_id, "description": None,
                  "config": json.dumps({key: {"value": value} for key, value in run.config.items()}),
                  "sweepName": run.sweep_id, "project": self._project(run.project, run.entity),
                  "historyLineCount": len(run.history)}
        return {"data": {"upsertBucket": {"bucket": bucket, "inserted": run.upserts == 1}}}

    def _op_RunResumeStatus(self, variables: dict[str, Any]) -> dict[str, Any]:
        run = self.runs.get(variables.get("name") or "")
        project = self._project(variables.get("project") or "uncategorized", variables.get("entity"))
        if run is None or (not run.history and not run.config):
            return {"data": {"model": {**project, "bucket": None}}}
        tail = [json.dumps(row) for row in run.rows()[-10:]]
        bucket = {"id": f"run-{run.id}", "name": run.id, "displayName": run.id,
                  "summaryMetrics": json.dumps(run.summary), "logLineCount": 0,
                  "historyLineCount": len(run.history), "eventsLineCount": 0,
                  "historyTail": json.dumps(tail), "eventsTail": "[]",
                  "config": json.dumps({key: {"value": value} for key, value in run.config.items()}),
                  "tags": [], "notes": None, "wandbConfig": "{}"}
        return {"data": {"model": {**project, "bucket": bucket}}}

    def _op_CreateRunFiles(self, variables: dict[str, Any]) -> dict[str, Any]:
        run_id = variables.get("run") or ""
        files = [{"name": name, "uploadUrl": f"{self.url}/fake-storage/{run_id}/{name}"}
                 for name in variables.get("files") or []]
        return {"data": {"createRunFiles": {"runID": f"run-{run_id}", "uploadHeaders": [], "files": files}}}

    def _op_OrganizationCoreWeaveOrganizationID(self, variables: dict[str, Any]) -> dict[str, Any]:
        return {"data": {}}

    def _op_ServerFeaturesQuery(self, variables: dict[str, Any]) -> dict[str, Any]:
        return {"data": {}}

    # -- the sweep service ---------------------------------------------------------------------------
    def _commands(self, sweep: FakeSweep, agent_id: str, live: set[str]) -> list[dict[str, Any]]:
        mine = [run for run in self.runs.values() if run.agent_id == agent_id]
        for run in mine:
            if run.id in live:
                if not run.complete:  # a run that sent `complete` is only exiting
                    run.state = "running"
            elif run.state == "running":
                run.state = _exit_state(run)
        self._hyperband(sweep)
        commands = [{"type": "stop", "run_id": run.id} for run in mine if run.id in live and run.stop_reason]
        if live:
            return commands
        run = self._next_run(sweep, agent_id)
        if run is None:
            return commands
        run.handed_out += 1
        command_type = "resume" if run.handed_out > 1 else "run"
        commands.append({"type": command_type, "run_id": run.id, "program": sweep.config.get("program"),
                         "args": {key: {"value": value} for key, value in run.args.items()}})
        return commands

    def _next_run(self, sweep: FakeSweep, agent_id: str) -> FakeRun | None:
        import sweeps

        runs = [run for run in self.runs.values() if run.sweep_id == sweep.id]
        preempted = [run for run in runs if run.state == "preempted"]
        if preempted:  # the service hands a preempted run out again, same id and parameters
            run = preempted[0]
        else:
            if sweep.config.get("run_cap") and len(runs) >= int(sweep.config["run_cap"]):
                return None
            proposal = sweeps.next_run(sweep.config, [_engine_run(run) for run in runs], validate=False)
            if proposal is None:  # a grid that is done
                return None
            args = {key: value["value"] for key, value in proposal.config.items()}
            run = FakeRun(id=_new_id(), sweep_id=sweep.id, project=sweep.project, entity=sweep.entity, args=args)
            self.runs[run.id] = run
        run.state, run.agent_id = "running", agent_id
        run.preempting, run.complete, run.exitcode = False, False, None
        sweep.agents[agent_id]["runs"].append(run.id)
        return run

    def _hyperband(self, sweep: FakeSweep) -> None:
        import sweeps

        if not sweep.config.get("early_terminate"):
            return
        runs = [run for run in self.runs.values() if run.sweep_id == sweep.id]
        for stopped in sweeps.stop_runs(sweep.config, [_engine_run(run) for run in runs], validate=False):
            run = self.runs[stopped.name]
            if run.stop_reason is None:
                run.stop_reason = "hyperband"

    # -- file_stream and uploads -------------------------------------------------------------------
    def file_stream(self, run_id: str, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            run = self.runs.get(run_id)
            if run is None:
                run = self.runs[run_id] = FakeRun(id=run_id, sweep_id=None, project="uncategorized")
            files = body.get("files") or {}
            history = files.get(HISTORY_FILE)
            if history:
                for index, line in enumerate(history.get("content") or []):
                    row = json.loads(line)
                    run.history[int(history.get("offset") or 0) + index] = row
                    run.received.append(row)
                    run.received_at.append(time.time())
            summary = files.get(SUMMARY_FILE)
            if summary and summary.get("content"):
                run.summary = json.loads(summary["content"][-1])
            if body.get("preempting"):
                run.preempting = True
            if body.get("complete"):
                run.complete = True
                run.exitcode = body.get("exitcode")
                run.state = _exit_state(run)
            return {"exitcode": None, "limits": {}}

    def upload(self, run_id: str, name: str, content: bytes) -> None:
        with self.lock:
            if run_id in self.runs:
                self.runs[run_id].files[name] = content


def _exit_state(run: FakeRun) -> str:
    """The state the service gives a run whose process is gone."""
    if run.stop_reason is not None:
        return "killed"
    if run.preempting:
        return "preempted"
    if not run.complete:
        return "crashed"
    return "finished" if run.exitcode == 0 else "failed"


def _engine_run(run: FakeRun):
    import sweeps

    state = run.state if run.state in sweeps.RunState.__members__ else "crashed"
    return sweeps.SweepRun(name=run.id, state=state, config={key: {"value": value} for key, value in run.args.items()},
                           history=run.rows(), summary_metrics=run.summary)


def _config_values(config: dict[str, Any]) -> dict[str, Any]:
    """{key: {"value": v, "desc": ...}} (as runs send it) -> {key: v}, W&B's own `_wandb` key left out."""
    return {key: (value.get("value") if isinstance(value, dict) else value)
            for key, value in config.items() if key != "_wandb"}


def _new_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


class _Handler(BaseHTTPRequestHandler):
    fake: FakeWandbBackend
    protocol_version = "HTTP/1.1"  # the client keeps connections alive

    def log_message(self, format: str, *args: Any) -> None:  # quiet: pytest shows failures, not traffic
        pass

    def _body(self) -> bytes:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        return body

    def _reply(self, payload: Any, status: int = 200) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _refuse(self) -> bool:
        """Answer 503 while the fake is in an outage (see FakeWandbBackend.outage)."""
        with self.fake.lock:
            if not self.fake.outage:
                return False
            self.fake.refused += 1
        self._reply({"error": "fake outage"}, status=503)
        return True

    def do_POST(self) -> None:
        body = self._body()
        if self._refuse():
            return
        path = self.path.split("?", 1)[0]
        if not self.headers.get("Authorization") and not path.startswith("/sdk/"):  # telemetry goes unsigned
            with self.fake.lock:
                self.fake.unauthenticated.append(self.path)
        if path == "/graphql":
            request = json.loads(body or b"{}")
            name = request.get("operationName") or _operation_name(request.get("query") or "")
            self._reply(self.fake.graphql(name, request.get("variables") or {}))
        elif path.startswith("/files/") and path.endswith("/file_stream"):
            parts = path.split("/")  # /files/ENTITY/PROJECT/RUN/file_stream
            self._reply(self.fake.file_stream(parts[4], json.loads(body or b"{}")))
        else:  # telemetry (/sdk/otel/v1/metrics) and anything else: accepted, ignored
            self._reply({})

    def do_PUT(self) -> None:
        body = self._body()
        if self._refuse():
            return
        parts = self.path.split("?", 1)[0].split("/")
        if len(parts) >= 4 and parts[1] == "fake-storage":
            self.fake.upload(parts[2], "/".join(parts[3:]), body)
        self._reply(b"")

    def do_GET(self) -> None:
        if self._refuse():
            return
        self._reply({})


def _operation_name(query: str) -> str:
    """`mutation Heartbeat(...` -> Heartbeat (when the request does not name its operation)."""
    for word in ("query", "mutation"):
        position = query.find(word + " ")
        if position != -1:
            rest = query[position + len(word):].strip()
            return rest.split("(", 1)[0].split("{", 1)[0].strip()
    return ""


@pytest.fixture
def wandb_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeWandbBackend]:
    """A running FakeWandbBackend; this process's environment points the real client at it.

    Subprocesses inherit that environment (HOME and WANDB_CONFIG_DIR isolated under tmp_path, a dummy
    key, WANDB_BASE_URL). WANDB_MODE and WANDB_SILENT are unset (the suite's defaults): runs go
    online to the fake unless a test sets WANDB_MODE, and print what they would print to a user.
    """
    backend = FakeWandbBackend().start()
    for key, value in backend.client_env(tmp_path / "wandb-home").items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_SILENT", raising=False)  # tests read what the client prints, as a user would
    for key in ("WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_DIR"):
        monkeypatch.delenv(key, raising=False)
    try:
        yield backend
    finally:
        backend.close()
