"""A Flower deployment on this machine's loopback: a SuperLink and N SuperNodes as
separate processes, with TLS and SuperNode authentication on, for trying the
deployment path (and testing it) on one machine.

`LocalDeployment` makes a self-signed CA and a server certificate for 127.0.0.1 /
localhost, an EC key pair per SuperNode, starts `flower-superlink` on a free port,
registers every SuperNode's public key (`flwr supernode register`), starts the
SuperNodes (each its node config and its own free Runtime API port), waits until all
are online, and runs `flwr run` on flexlora's app folder. `stop()` (also on leaving
the `with` block, on Ctrl-C or an error) ends every process it started and their
children: SIGTERM, then SIGKILL after a grace period.

Each process gets its own FLWR_HOME under the work folder, so nothing touches the
user's ~/.flwr; the `flwr` CLI finds the SuperLink through the connection written to
`<workdir>/cli/config.toml`.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import logging
import os
import queue
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO, Any

from flexlora.errors import FlexLoraError

logger = logging.getLogger(__name__)

CONNECTION = "flexlora-local"
"""The name of the SuperLink connection in the work folder's Flower config."""

NodeValue = str | int | float | bool


def app_dir() -> Path:
    """flexlora's Flower App folder (its pyproject declares the ServerApp and ClientApp)."""
    return Path(str(resources.files("flexlora.flower") / "app"))


def flower_env(home: Path) -> dict[str, str]:
    """The environment of a Flower process: its own FLWR_HOME, no telemetry, no update
    check, no dependency installation (the machine has flexlora already, and may have
    no network), and this interpreter's scripts first on PATH, because the SuperLink and
    SuperNodes start `flower-superexec` and the apps by name."""
    env = dict(os.environ)
    env["FLWR_HOME"] = str(home)
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def flower_command(name: str) -> str:
    """The path of a Flower console script of this interpreter's environment."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    from shutil import which

    found = which(name)
    if found is None:
        raise FlexLoraError(
            f"{name} not found: the Flower deployment needs pip install 'flexlora[flower]'"
        )
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- certificates and keys ----------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    ca: Path
    """The CA certificate every client verifies the SuperLink with."""
    cert: Path
    key: Path


def make_certificates(folder: Path, hosts: Sequence[str] = ("127.0.0.1", "localhost"),
                      days: int = 2) -> Certificates:  # fmt: skip
    """A self-signed CA and a server certificate it signs, valid for `hosts` (IP
    addresses or DNS names): what the SuperLink's TLS needs."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flexlora local CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    out = Certificates(folder / "ca.crt", folder / "server.pem", folder / "server.key")
    out.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(
        out.key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return out


def make_node_key(folder: Path, name: str) -> tuple[Path, Path]:
    """An EC P-384 key pair in OpenSSH format, (private, public): the SuperNode keeps
    the private key (`--auth-supernode-private-key`), the SuperLink registers the
    public one (`flwr supernode register`). What `ssh-keygen -t ecdsa -b 384` makes."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = folder / name, folder / f"{name}.pub"
    _write_private(
        private,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    return private, public


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


# -- node configs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeSpec:
    """One SuperNode's node config, e.g. {"client-id": "a", "data-path": "/x/a.json",
    "max-rank": 4}."""

    config: Mapping[str, NodeValue]

    @classmethod
    def parse(cls, text: str) -> NodeSpec:
        """`client-id=a data-path=/x/a.json max-rank=4` (shell quoting allowed):
        integers and floats become numbers, true/false booleans, the rest (and always
        client-id and data-path) strings."""
        config: dict[str, NodeValue] = {}
        for part in shlex.split(text):
            key, sep, raw = part.partition("=")
            if not sep or not key:
                raise FlexLoraError(f"node config {text!r}: {part!r} is not KEY=VALUE")
            config[key] = _node_value(key, raw)
        if not config:
            raise FlexLoraError("node config: empty")
        return cls(config)

    @property
    def name(self) -> str:
        return str(self.config.get("client-id", "node"))

    def argument(self) -> str:
        """The `--node-config` argument of flower-supernode (TOML values, space
        separated; strings in single quotes, which TOML reads literally)."""
        parts = []
        for key, value in self.config.items():
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, int | float):
                text = repr(value)
            else:
                if "'" in value or "\n" in value:
                    raise FlexLoraError(f"node config {key}: {value!r} contains a quote")
                text = f"'{value}'"
            if any(c.isspace() or c == "=" for c in key):
                raise FlexLoraError(f"node config: bad key {key!r}")
            parts.append(f"{key}={text}")
        return " ".join(parts)


STRING_KEYS = frozenset({"client-id", "data-path"})
"""Node config keys whose values stay strings even when they look like numbers."""


def _node_value(key: str, raw: str) -> NodeValue:
    # a number only when it reads back the same: client "007" keeps its zeros
    if key in STRING_KEYS:
        return raw
    if raw in ("true", "false"):
        return raw == "true"
    for kind in (int, float):
        with contextlib.suppress(ValueError):
            if str(kind(raw)) == raw:
                return kind(raw)
    return raw


# -- processes ----------------------------------------------------------------------------


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


def _children(pid: int) -> list[int]:
    """Every live descendant of `pid` (Linux /proc), so that the processes a SuperLink
    or SuperNode starts in sessions of their own (SuperExec, the apps) end with it."""
    parent_of: dict[int, int] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name (field 2) may hold spaces: fields after its ")" are fixed
        fields = stat.rsplit(")", 1)[-1].split()
        parent_of[int(entry.name)] = int(fields[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        kids = [p for p, parent in parent_of.items() if parent == current]
        found.extend(kids)
        frontier.extend(kids)
    return found


def _alive(pid: int) -> bool:
    """Whether `pid` runs: a zombie (ended, not yet reaped by its parent) does not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _end(pids: Sequence[int], grace: float) -> None:
    """SIGTERM each pid, then SIGKILL those still running after `grace` seconds."""
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended on its own meanwhile
        os.kill(pid, sig)


# -- the deployment -------------------------------------------------------------------------


@dataclass(frozen=True)
class RunOutcome:
    run_id: int
    status: str
    """Flower's final status, e.g. "finished:completed" or "finished:failed"."""
    details: str

    @property
    def ok(self) -> bool:
        return self.status == "finished:completed"


@dataclass
class LocalDeployment:
    """A SuperLink and one SuperNode per `nodes` entry on 127.0.0.1, TLS on, SuperNode
    authentication on unless `auth` is False. Use it as a context manager."""

    workdir: Path
    nodes: Sequence[NodeSpec]
    auth: bool = True
    ready_timeout: float = 120.0
    grace: float = 10.0
    port: int = 0
    """The SuperLink's port (Fleet, Control and Runtime API in one): 0 picks a free one."""
    env: Mapping[str, str] = field(default_factory=dict)
    """More environment for every Flower process, e.g. OMP_NUM_THREADS."""
    _processes: list[_Process] = field(default_factory=list, init=False, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def cli_home(self) -> Path:
        """FLWR_HOME of the `flwr` CLI: its config.toml names the SuperLink."""
        return self.workdir / "cli"

    def __enter__(self) -> LocalDeployment:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if not self.nodes:
            raise FlexLoraError("a local deployment needs at least one SuperNode")
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise FlexLoraError("two SuperNodes have the same client-id")
        self.workdir = self.workdir.resolve()
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        certs = make_certificates(self.workdir / "certs")
        self.port = self.port or free_port()
        self._write_cli_config(certs.ca)
        self._start_superlink(certs)
        self._wait_for_superlink()
        for spec in self.nodes:
            self.add_node(spec)
        self.wait_until_online(len(self.nodes))

    def add_node(self, spec: NodeSpec, *, register: bool = True) -> subprocess.Popen[bytes]:
        """Start one more SuperNode, its key registered first (with authentication on)
        unless `register` is False: the SuperLink then refuses it and it exits."""
        index = sum(p.name.startswith("supernode-") for p in self._processes)
        private, public = make_node_key(self.workdir / "keys", f"node{index}")
        if self.auth and register:
            self._register(public)
        key = private if self.auth else None
        return self._start_supernode(index, spec, self.workdir / "certs" / "ca.crt", key)

    def pids(self) -> list[int]:
        """The running processes this deployment started, and their descendants."""
        running = [p.popen.pid for p in self._processes if p.popen.poll() is None]
        return running + [c for pid in running for c in _children(pid)]

    def stop(self) -> None:
        """End every process this deployment started and their descendants: the
        SuperNodes together, then the SuperLink, then whatever they left behind."""
        processes, self._processes = self._processes, []
        running = [p for p in processes if p.popen.poll() is None]
        # listed before their parents end: orphans can no longer be traced to them
        descendants = [c for p in running for c in _children(p.popen.pid)]
        nodes = [p for p in running if p.name != "superlink"]
        links = [p for p in running if p.name == "superlink"]
        for group in (nodes, links):
            _end([p.popen.pid for p in group], self.grace)
        for process in processes:
            process.popen.wait()  # reaped: no zombies left behind
        _end([c for c in descendants if _alive(c)], self.grace)

    def _write_cli_config(self, ca: Path) -> None:
        self.cli_home.mkdir(parents=True, exist_ok=True)
        (self.cli_home / "config.toml").write_text(
            "[superlink]\n"
            f'default = "{CONNECTION}"\n\n'
            f"[superlink.{CONNECTION}]\n"
            f'address = "{self.address}"\n'
            f"root-certificates = {json.dumps(str(ca))}\n"
        )

    def _spawn(self, name: str, home: Path, command: list[str]) -> _Process:
        log = self.workdir / "logs" / f"{name}.log"
        with log.open("ab") as out:
            # a session of its own: Ctrl-C in a terminal reaches only this process,
            # which then takes the deployment down in order
            popen = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**flower_env(home), **self.env},
                cwd=self.workdir,
                start_new_session=True,
            )
        process = _Process(name, popen, log)
        self._processes.append(process)
        return process

    def _start_superlink(self, certs: Certificates) -> None:
        command = [
            flower_command("flower-superlink"),
            "--ssl-ca-certfile", str(certs.ca),
            "--ssl-certfile", str(certs.cert),
            "--ssl-keyfile", str(certs.key),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--disable-runtime-dependency-installation",
        ]  # fmt: skip
        if self.auth:
            command.append("--enable-supernode-auth")
        self._spawn("superlink", self.workdir / "superlink", command)

    def _start_supernode(
        self, index: int, spec: NodeSpec, ca: Path, key: Path | None
    ) -> subprocess.Popen[bytes]:
        command = [
            flower_command("flower-supernode"),
            "--superlink", self.address,
            "--root-certificates", str(ca),
            "--node-config", spec.argument(),
            "--host", "127.0.0.1",
            "--port", str(free_port()),  # the SuperNode's own Runtime API
        ]  # fmt: skip
        if key is not None:
            command += ["--auth-supernode-private-key", str(key)]
        name, home = f"supernode-{index}-{spec.name}", self.workdir / f"supernode-{index}"
        return self._spawn(name, home, command).popen

    def _check_alive(self) -> None:
        for process in self._processes:
            code = process.popen.poll()
            if code is not None:
                tail = process.log.read_text(errors="replace").strip().splitlines()[-5:]
                raise FlexLoraError(
                    f"{process.name} exited with status {code}: "
                    + (" | ".join(tail) or "no output")
                    + f" (log: {process.log})"
                )

    def _wait_for_superlink(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while True:
            self._check_alive()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise FlexLoraError(
                    f"the SuperLink did not listen on {self.address} "
                    f"within {self.ready_timeout:.0f} s"
                )
            time.sleep(0.2)

    # -- the flwr CLI -------------------------------------------------------------------

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """`flwr ARGS` against this deployment's SuperLink (its output captured)."""
        return subprocess.run(
            [flower_command("flwr"), *args],
            capture_output=True,
            text=True,
            env=flower_env(self.cli_home),
            cwd=self.workdir,
            timeout=timeout,
            check=False,
        )

    def _flwr_json(self, *args: str) -> dict[str, Any]:
        done = self.flwr(*args, "--format", "json")
        try:
            answer: dict[str, Any] = json.loads(done.stdout)
        except json.JSONDecodeError:
            answer = {}
        if done.returncode != 0 or not answer.get("success", False):
            output = (done.stdout + done.stderr).strip().splitlines()
            raise FlexLoraError(
                f"flwr {' '.join(args)} failed: " + (" | ".join(output[-3:]) or "no output")
            )
        return answer

    def _register(self, public_key: Path) -> None:
        self._flwr_json("supernode", "register", str(public_key), CONNECTION)

    def online_nodes(self) -> list[int]:
        """The ids of the SuperNodes the SuperLink sees online."""
        nodes = self._flwr_json("supernode", "ls", CONNECTION).get("nodes", [])
        return [int(n["node-id"]) for n in nodes if n.get("status") == "online"]

    def wait_until_online(self, count: int) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while True:
            self._check_alive()
            if len(self.online_nodes()) >= count:
                return
            if time.monotonic() > deadline:
                raise FlexLoraError(
                    f"{count} SuperNodes did not come online within {self.ready_timeout:.0f} s "
                    f"(logs: {self.workdir / 'logs'})"
                )
            time.sleep(0.5)

    def run_app(
        self,
        run_config: Mapping[str, NodeValue],
        *,
        app: Path | None = None,
        echo: Callable[[str], None] | None = None,
        timeout: float = 3600.0,
    ) -> RunOutcome:
        """`flwr run APP --stream` with `run_config`; each line of the run's log goes to
        `echo` as it comes. Returns the run's final status as the SuperLink reports it
        (`flwr run` exits 0 even when the ServerApp fails)."""
        import tomli_w

        overrides = self.workdir / "run-config.toml"
        overrides.write_text(tomli_w.dumps(dict(run_config)))
        command = [
            flower_command("flwr"), "run", str(app or app_dir()), CONNECTION,
            "--run-config", str(overrides), "--stream",
        ]  # fmt: skip
        streaming = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=flower_env(self.cli_home),
            cwd=self.workdir,
        )
        lines: queue.Queue[str | None] = queue.Queue()
        # a reader thread, so that a run that goes quiet still meets its deadline
        threading.Thread(target=_read_lines, args=(streaming, lines), daemon=True).start()
        run_id: int | None = None
        deadline = time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                try:
                    line = lines.get(timeout=max(left, 0.0))
                except queue.Empty:
                    if run_id is not None:
                        self.flwr("stop", str(run_id), CONNECTION)
                    raise FlexLoraError(f"the run took over {timeout:.0f} s") from None
                if line is None:
                    break
                run_id = run_id or _started_run(line)
                if echo is not None:
                    echo(line.rstrip("\n"))
        finally:
            if streaming.poll() is None:
                _end([streaming.pid], self.grace)
            streaming.wait()
        if run_id is None:
            raise FlexLoraError("flwr run started no run (see its output above)")
        return self.run_status(run_id)

    def run_status(self, run_id: int) -> RunOutcome:
        """The run's status; waits (up to ready_timeout) until it has finished."""
        deadline = time.monotonic() + self.ready_timeout
        while True:
            runs = self._flwr_json("ls", CONNECTION, "--run-id", str(run_id)).get("runs", [])
            run = runs[0] if runs else {}
            status = str(run.get("status", "unknown"))
            if status.startswith("finished") or time.monotonic() > deadline:
                return RunOutcome(run_id, status, str(run.get("status-details", "")))
            time.sleep(0.5)


def _read_lines(process: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
    """Every line `process` prints, then None."""
    assert process.stdout is not None
    for line in process.stdout:
        lines.put(line)
    lines.put(None)


def _started_run(line: str) -> int | None:
    """The run id in `flwr run`'s "Successfully started run <id>" line."""
    _, marker, rest = line.partition("Successfully started run ")
    words = rest.split()
    return int(words[0]) if marker and words and words[0].isdigit() else None


def write_echo(stream: IO[str]) -> Callable[[str], None]:
    def echo(line: str) -> None:
        stream.write(line + "\n")
        stream.flush()

    return echo
