"""Run one command as root inside a throwaway Linux guest on this machine.

    .venv/bin/python bench/vm/run.py -- python3 -c 'import resource; print(resource.getrlimit(7))'
    .venv/bin/python bench/vm/run.py --timeout 3600 -- \\
        .venv/bin/python bench/compare.py --idle-only --out bench/out/vm/results
    .venv/bin/python bench/vm/run.py --check      # which backend would run, or why none

Why: a process here may hold at most 20,000 descriptors (RLIMIT_NOFILE hard limit) and
cannot raise that (no CAP_SYS_RESOURCE), so the 50,000 and 100,000 idle-connection
steps of ``bench/compare.py`` cannot run on the host. A guest's root can raise every
limit: ``fs.nr_open``, ``fs.file-max``, ``RLIMIT_NOFILE``, the ephemeral port range,
``somaxconn``.

Backends (``--backend``; ``auto`` takes the first that works here):

- ``kvm``: ``qemu-system-x86_64 -enable-kvm`` booting Debian's own kernel (the package
  ``linux-image-amd64`` depends on, fetched with ``apt-get download`` and unpacked into
  ``bench/vm/.cache/``, never installed) with a small initramfs (busybox-static, the
  virtio/9p/overlay modules, ``init.sh``); the host's root is shared over virtio-9p.
  Needs a KVM that runs unmodified kernels. This machine's /dev/kvm is PVM
  (``kvm_pvm``: guests run at CPL 3 and must be PVM-enabled kernels; anything else is
  emulated instruction by instruction until it reaches 64-bit PVM mode, which Debian's
  kernel never does), so ``auto`` skips it here.
- ``uml``: Debian's User-Mode Linux kernel (package ``user-mode-linux``, unpacked the
  same way), a Linux 6.1 kernel that runs as a host process: guest processes run
  natively, their system calls and page faults go through the UML kernel (ptrace). One
  vCPU. Its guest pages are mmap()ed into the host processes one range each, so the
  host's ``vm.max_map_count`` is raised for the run (and put back after).
- ``tcg``: the ``kvm`` guest under qemu's software emulation: runs anywhere, many times
  slower than the host (measured: 60-80 WebSocket handshakes a second on an AMD EPYC,
  130-150 on a Sapphire Rapids Xeon, where 100,000 idle connections, both deflate
  settings, took 32 minutes). ``auto`` never picks it; ``bench/compare.py`` falls back
  to it when User-Mode Linux panics at boot (``UML_XSTATE_WHY``).

In every backend the guest sees the host's whole root file system READ-ONLY, with a
tmpfs overlay on top (writes inside the guest land in its RAM and vanish with it),
plus READ-WRITE shares at the same paths as on the host (``--rw``, by default
``bench/out``). ``init.sh`` brings up ``lo``, raises the limits, chroots into that root
and runs the command as root with cwd ``--cwd`` (the repository), ``/dev/null`` as
stdin and the console as stdout/stderr, which this script copies to its own stdout and
to ``bench/out/vm/console.log``. Then the guest powers off and this script exits with
the command's exit status.

The guest has no network device at all (qemu: ``-nodefaults -nic none``; UML: no
``ethN=``): only its own loopback, so nothing it starts can listen or connect outside
it. Every wait is bounded: the command by ``--timeout`` inside the guest, the guest by
the same plus a margin, after which it is killed; the guest is stopped on every way out
of this script (exceptions, Ctrl-C, SIGTERM, and, via PR_SET_PDEATHSIG, this script
being killed).

Exit status: the command's; 124 if it ran out of time; 125 if the guest could not run
it (its console says why); 2 if no guest can be started here (``--check`` says why).
Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import fcntl
import gzip
import hashlib
import io
import json
import os
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/: its helper modules
from processes import stop_group

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CACHE = HERE / ".cache"
INIT = HERE / "init.sh"
LOGS = REPO / "bench" / "out" / "vm"

QEMU = "qemu-system-x86_64"
BUSYBOX = "/bin/busybox"
KERNEL_META = "linux-image-amd64"
UML_PACKAGE = "user-mode-linux"
#: The host's CPU model, without IA32_ARCH_CAPABILITIES (which a nested KVM may refuse
#: to set: qemu then aborts with "failed to set MSR 0x10a").
KVM_CPU = "host,-arch-capabilities"
#: What the qemu guest needs from the kernel's modules: virtio over PCI, 9p over
#: virtio, the overlay for a writable root, the balloon so that memory the guest frees
#: goes back to the host (free page reporting). Their dependencies are added from each
#: .ko's modinfo.
QEMU_MODULES = ["virtio_pci", "9pnet_virtio", "9p", "overlay", "virtio_balloon"]
#: UML has hostfs built in; only the overlay is a module.
UML_MODULES = ["overlay"]
#: Debian's packages holding the tools; installed with apt-get when missing.
QEMU_TOOLS = {QEMU: "qemu-system-x86", BUSYBOX: "busybox-static"}
UML_TOOLS = {BUSYBOX: "busybox-static"}

#: Limits the guest's root sets before running the command (sysctl name, value).
SYSCTLS = [
    ("fs.nr_open", "2097152"),
    ("fs.file-max", "4194304"),
    ("net.ipv4.ip_local_port_range", "1024 65535"),
    ("net.core.somaxconn", "65535"),
    ("net.ipv4.tcp_max_syn_backlog", "65535"),
    ("net.core.netdev_max_backlog", "65535"),
]
NOFILE = 1048576
#: Host variables the command sees (nothing else of this process's environment is
#: passed: it is written to a file the guest reads).
PASS_ENV = ["PATH", "LANG", "LC_ALL", "TZ", "TERM"]

APT_TIMEOUT = 900.0
#: Seconds the guest gets beyond the command's --timeout: boot, mounts, the status.
BOOT_MARGIN = 120.0
STOP_TIMEOUT = 10.0
MSIZE = 262144
MAX_MAP_COUNT = Path("/proc/sys/vm/max_map_count")

KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01


#: What Debian 12's UML (6.1) prints when the host's XSAVE area is larger than the one it
#: copies (AVX-512 with AMX, e.g. Sapphire Rapids): the host refuses its
#: PTRACE_SETREGSET with EFAULT and the guest panics at boot. Hiding NT_X86_XSTATE from
#: it (a seccomp filter, so that it keeps to FXSAVE's registers) gets it past that, and
#: then the guest's first process dies of a SIGSEGV; Debian 13's UML (6.12, run here
#: with its three glibc 2.38 symbols supplied by a preloaded shim) panics the same way
#: (both tried 2026-12-05). No guest on such a host.
_UML_XSTATE = b"ptrace set fp regs failed"
UML_XSTATE_WHY = (
    "vm: this host's CPU keeps more XSAVE state (AVX-512, AMX) than User-Mode Linux "
    "(6.1, and 6.12 too) knows: it panics at boot ('ptrace set fp regs failed, errno = 14')"
)


class VMError(RuntimeError):
    """No guest can be started: what is missing, in words."""


# -- what this machine has ---------------------------------------------------------------


def kvm_problem() -> str | None:
    """None if this process can create a KVM virtual machine that runs an unmodified
    kernel, else why not. Does not block (two ioctls on /dev/kvm; the VM created is
    closed at once)."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"/dev/kvm: {exc.strerror}"
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION, 0)
        if version != 12:
            return f"/dev/kvm: KVM API version {version}, not 12"
        vm = fcntl.ioctl(fd, KVM_CREATE_VM, 0)
        os.close(vm)
    except OSError as exc:
        return f"KVM_CREATE_VM: {exc.strerror}"
    finally:
        os.close(fd)
    modules = Path("/sys/module")
    if (modules / "kvm_pvm").exists() and not any(
        (modules / m).exists() for m in ("kvm_intel", "kvm_amd")
    ):
        return (
            "/dev/kvm is PVM (kvm_pvm), which runs only PVM-enabled guest kernels: "
            "Debian's kernel stays in PVM's instruction emulator (no output in 4 min)"
        )
    return None


def uml_problem() -> str | None:
    """None if User-Mode Linux can run here, else why not (it needs ptrace and an
    executable tmpfs for its memory file). Does not block."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        return "/dev/shm is not writable (UML keeps the guest's memory there)"
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            fields = line.split()
            if fields[1] == "/dev/shm" and "noexec" in fields[3].split(","):
                return "/dev/shm is mounted noexec (UML maps the guest's memory executable)"
    return None


def choose_backend(wanted: str) -> str:
    """The backend to use: ``wanted`` unless it is ``auto``, then kvm, else uml.
    Raises VMError (naming every reason) if none can run."""
    checks: dict[str, Callable[[], str | None]] = {
        "kvm": kvm_problem,
        "uml": uml_problem,
        "tcg": lambda: None,
    }
    if wanted != "auto":
        problem = checks[wanted]()
        if problem:
            raise VMError(f"{wanted}: {problem}")
        return wanted
    reasons = []
    for name in ("kvm", "uml"):
        problem = checks[name]()
        if problem is None:
            return name
        reasons.append(f"{name}: {problem}")
    raise VMError("; ".join(reasons))


def _apt(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run apt-get/apt-cache (bounded by APT_TIMEOUT) in ``cwd``, output captured; never
    raises for a non-zero exit."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(
        list(args),
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=APT_TIMEOUT,
        check=False,
    )


def _apt_retrying(*args: str) -> subprocess.CompletedProcess[str]:
    """As _apt, once more after ``apt-get update`` if the first try failed (a fresh
    machine has no package lists)."""
    result = _apt(*args)
    if result.returncode != 0:
        print(f"vm: {args[0]} failed, running apt-get update", file=sys.stderr, flush=True)
        _apt("apt-get", "update", "-q")
        result = _apt(*args)
    return result


def ensure_tools(tools: dict[str, str]) -> None:
    """Install the packages of the missing ``tools`` with apt-get. Blocks (up to twice
    APT_TIMEOUT); raises VMError if they cannot be had."""
    missing = sorted({pkg for tool, pkg in tools.items() if shutil.which(tool) is None})
    if not missing:
        return
    print(f"vm: installing {' '.join(missing)}", file=sys.stderr, flush=True)
    result = _apt_retrying("apt-get", "install", "-y", "-q", "--no-install-recommends", *missing)
    if result.returncode != 0 or any(shutil.which(tool) is None for tool in tools):
        raise VMError(f"apt-get install {' '.join(missing)} failed: {result.stderr[-2000:]}")


def kernel_package() -> str:
    """The versioned kernel package Debian's linux-image-amd64 depends on, e.g.
    linux-image-6.1.0-57-amd64. Blocks on apt-cache; raises VMError."""
    result = _apt_retrying("apt-cache", "depends", KERNEL_META)
    found = re.findall(r"Depends: (linux-image-[0-9][^\s]*)", result.stdout)
    if not found:
        raise VMError(f"apt-cache depends {KERNEL_META}: no kernel package ({result.stderr})")
    return str(found[0])


def ensure_package(package: str | None, prefix: str, refresh: bool = False) -> Path:
    """The directory under CACHE where Debian package ``package`` is unpacked (with
    ``dpkg-deb -x``, after ``apt-get download``). ``package`` None: the kernel package
    linux-image-amd64 depends on. A package already unpacked there (any version, the
    newest name first) is used as it is unless ``refresh``. Blocks; raises VMError."""
    cached = sorted(p for p in CACHE.glob(f"{prefix}*") if (p / ".unpacked").exists())
    if cached and not refresh:
        return cached[-1]
    name = package or kernel_package()
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        print(f"vm: downloading {name}", file=sys.stderr, flush=True)
        result = _apt("apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", name, cwd=tmp)
        debs = list(Path(tmp).glob("*.deb"))
        if result.returncode != 0 or not debs:
            raise VMError(f"apt-get download {name} failed: {result.stderr[-2000:]}")
        root = CACHE / debs[0].name.removesuffix(".deb")
        if (root / ".unpacked").exists():
            return root
        unpacked = Path(tmp) / "root"
        subprocess.run(
            ["dpkg-deb", "-x", str(debs[0]), str(unpacked)], check=True, timeout=APT_TIMEOUT
        )
        (unpacked / ".unpacked").write_text(debs[0].name + "\n")
        shutil.rmtree(root, ignore_errors=True)
        unpacked.rename(root)
    return root


# -- kernel modules and the initramfs ------------------------------------------------------


def modinfo_depends(ko: Path) -> list[str]:
    """The ``depends=`` of a kernel module (what ``modinfo -F depends`` prints), read from
    its .modinfo section: ELF64 little-endian, as every amd64 module is."""
    data = ko.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise VMError(f"{ko}: not an ELF64 file")
    shoff = int.from_bytes(data[0x28:0x30], "little")
    shentsize = int.from_bytes(data[0x3A:0x3C], "little")
    shnum = int.from_bytes(data[0x3C:0x3E], "little")
    shstrndx = int.from_bytes(data[0x3E:0x40], "little")

    def section(i: int) -> tuple[int, int, int]:
        base = shoff + i * shentsize
        name = int.from_bytes(data[base : base + 4], "little")
        offset = int.from_bytes(data[base + 0x18 : base + 0x20], "little")
        size = int.from_bytes(data[base + 0x20 : base + 0x28], "little")
        return name, offset, size

    _, strtab, _ = section(shstrndx)
    for i in range(shnum):
        name, offset, size = section(i)
        if data[strtab + name : data.index(b"\0", strtab + name)] == b".modinfo":
            for entry in data[offset : offset + size].split(b"\0"):
                if entry.startswith(b"depends="):
                    return [d for d in entry[8:].decode().split(",") if d]
            return []
    raise VMError(f"{ko}: no .modinfo section")


def module_order(modules: Path, wanted: Iterable[str]) -> list[Path]:
    """The .ko files of ``wanted`` and everything they depend on, each after its
    dependencies (the order to insmod them in). Raises VMError for a module the kernel
    package lacks, unless the kernel has it built in."""
    index = {ko.name.split(".ko")[0].replace("-", "_"): ko for ko in modules.rglob("*.ko*")}
    builtin = set()
    with contextlib.suppress(OSError):
        for line in (modules / "modules.builtin").read_text().splitlines():
            builtin.add(Path(line).name.split(".ko")[0].replace("-", "_"))
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in seen:
            return
        seen.add(name)
        if name not in index:
            if name in builtin:
                return
            raise VMError(f"kernel module {name} is not in {modules}")
        ko = index[name]
        if ko.suffix != ".ko":
            raise VMError(f"{ko}: compressed modules are not handled (busybox insmod)")
        for dep in modinfo_depends(ko):
            visit(dep)
        order.append(ko)

    for name in wanted:
        visit(name)
    return order


def cpio_newc(entries: Iterable[tuple[str, int, bytes, int]]) -> bytes:
    """A cpio archive in the "newc" format the kernel unpacks as an initramfs, from
    (path, mode, data, rdev) entries (rdev: (major << 8) | minor for device nodes)."""
    out = io.BytesIO()

    def pad() -> None:
        out.write(b"\0" * (-out.tell() % 4))

    ino = 1
    for path, mode, data, rdev in [*entries, ("TRAILER!!!", 0, b"", 0)]:
        name = path.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev >> 8, rdev & 0xFF, len(name), 0]
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + name)
        pad()
        out.write(data)
        pad()
        ino += 1
    return out.getvalue()


def ensure_initramfs(release: str, kos: list[Path]) -> Path:
    """The qemu guest's initramfs (gzip'd cpio) for kernel ``release``: busybox, the
    modules ``kos`` (in that load order), INIT as /init. Built when missing (keyed by
    its contents); returns its path."""
    busybox = Path(BUSYBOX).read_bytes()
    init = INIT.read_bytes()
    digest = hashlib.sha256(busybox + init + "\n".join(k.name for k in kos).encode())
    path = CACHE / f"initramfs-{release}-{digest.hexdigest()[:16]}.gz"
    if path.exists():
        return path
    entries: list[tuple[str, int, bytes, int]] = []
    for d in ["bin", "dev", "proc", "sys", "run", "modules"]:
        entries.append((d, 0o040755, b"", 0))
    entries.append(("dev/console", 0o020600, b"", (5 << 8) | 1))
    entries.append(("dev/null", 0o020666, b"", (1 << 8) | 3))
    entries.append(("bin/busybox", 0o100755, busybox, 0))
    entries.append(("init", 0o100755, init, 0))
    for ko in kos:
        entries.append((f"modules/{ko.name}", 0o100644, ko.read_bytes(), 0))
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(cpio_newc(entries), compresslevel=6))
    tmp.rename(path)
    for old in CACHE.glob(f"initramfs-{release}-*.gz"):
        if old != path:
            old.unlink()
    return path


# -- the guests ----------------------------------------------------------------------------


@dataclasses.dataclass
class Guest:
    """How to start one guest: its argv, the environment, what it is."""

    backend: str
    argv: list[str]
    kernel: str  # the guest's `uname -r`
    package: str  # the Debian package it came from
    cpus: int
    memory: str
    #: (path of a sysctl under /proc/sys, the value the run needs at least)
    host_sysctls: list[tuple[Path, int]] = dataclasses.field(default_factory=list)
    env: dict[str, str] = dataclasses.field(default_factory=dict)


def _memory_bytes(memory: str) -> int:
    match = re.fullmatch(r"(\d+)([KMGT]?)i?B?", memory.strip(), re.IGNORECASE)
    if not match:
        raise VMError(f"--memory {memory}: not like 12G")
    scale = {"": 2**20, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    return int(match.group(1)) * scale[match.group(2).upper()]


def _kernel_cmdline(config: dict[str, str]) -> str:
    # init.sh reads the settings from its environment: the kernel passes every
    # key=value it does not know (and without a dot) to init that way.
    return " ".join(f"{k}={v}" for k, v in config.items())


def qemu_guest(
    backend: str, cpus: int, memory: str, ctl: Path, rw: list[Path], refresh: bool
) -> Guest:
    """The qemu command line (KVM or software emulation) for a guest running INIT."""
    ensure_tools(QEMU_TOOLS)
    root = ensure_package(None, "linux-image-", refresh)
    vmlinuz = sorted((root / "boot").glob("vmlinuz-*"))
    if not vmlinuz:
        raise VMError(f"no vmlinuz in {root / 'boot'}")
    release = vmlinuz[-1].name.removeprefix("vmlinuz-")
    kos = module_order(root / "lib" / "modules" / release, QEMU_MODULES)
    initramfs = ensure_initramfs(release, kos)
    config = {
        "vmmode": "qemu",
        "vmmodules": ",".join(f"/modules/{ko.name}" for ko in kos),
        "vmshares": ",".join(f"rw{i}:{p}" for i, p in enumerate(rw)),
    }
    accel = (
        ["-enable-kvm", "-cpu", KVM_CPU]
        if backend == "kvm"
        else ["-accel", "tcg,thread=multi,tb-size=512", "-cpu", "max"]
    )
    argv = [
        QEMU,
        *accel,
        "-smp",
        str(cpus),
        "-m",
        memory,
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-monitor",
        "none",
        "-nic",
        "none",
        "-no-reboot",
        "-kernel",
        str(vmlinuz[-1]),
        "-initrd",
        str(initramfs),
        "-append",
        f"console=ttyS0 quiet loglevel=4 panic=-1 rdinit=/init {_kernel_cmdline(config)}",
        "-device",
        "virtio-balloon-pci,free-page-reporting=on",
        "-virtfs",
        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-virtfs",
        f"local,path={ctl},mount_tag=vmctl,security_model=none,multidevs=remap",
    ]
    for i, path in enumerate(rw):
        argv += ["-virtfs", f"local,path={path},mount_tag=rw{i},security_model=none"]
    return Guest(backend, argv, release, root.name, cpus, memory)


def uml_guest(memory: str, ctl: Path, rw: list[Path], refresh: bool) -> Guest:
    """The command line of a User-Mode Linux guest running INIT (one vCPU)."""
    ensure_tools(UML_TOOLS)
    root = ensure_package(UML_PACKAGE, "user-mode-linux", refresh)
    binary = root / "usr" / "bin" / "linux.uml"
    module_dirs = sorted((root / "usr" / "lib" / "uml" / "modules").iterdir())
    if not binary.exists() or not module_dirs:
        raise VMError(f"{root}: no usr/bin/linux.uml or no modules")
    release = module_dirs[-1].name
    kos = module_order(module_dirs[-1], UML_MODULES)
    config = {
        "vmmode": "uml",
        "vmctl": str(ctl),
        "vmmodules": ",".join(map(str, kos)),
        "vmshares": ",".join(f"rw{i}:{p}" for i, p in enumerate(rw)),
    }
    argv = [
        str(binary),
        f"mem={memory}",
        "root=/dev/root",
        "rootfstype=hostfs",
        "rootflags=/",
        "ro",
        f"init={INIT}",
        "con0=fd:0,fd:3",
        "con=null",
        "ssl=null",
        "quiet",
        "loglevel=4",
        "panic=-1",
        *(f"{k}={v}" for k, v in config.items()),
    ]
    # Each guest page is mapped into its host process separately: a guest process with
    # N resident pages needs about N mappings there.
    pages = _memory_bytes(memory) // 4096
    return Guest(
        "uml",
        argv,
        release,
        root.name,
        1,
        memory,
        host_sysctls=[(MAX_MAP_COUNT, pages + 65536)],
        env={"TMPDIR": "/dev/shm"},
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def host_sysctls(wanted: list[tuple[Path, int]]) -> Iterator[None]:
    """Raise each sysctl to at least its value while inside; on the way out, put back
    the value found before the first of the runs (of this script) that are using it,
    once the last of them is done (each run leaves a note of it in CACHE while inside).
    Raises VMError if one cannot be raised."""
    notes = []
    try:
        for path, value in wanted:
            others = []
            for note in CACHE.glob(f"sysctl-{path.name}.*"):
                pid = int(note.suffix[1:])
                if pid != os.getpid() and _alive(pid):
                    others.append(int(note.read_text()))
                else:
                    note.unlink(missing_ok=True)
            current = int(path.read_text().split()[0])
            original = others[0] if others else current
            note = CACHE / f"sysctl-{path.name}.{os.getpid()}"
            note.write_text(f"{original}\n")
            notes.append((note, path, original))
            if current < value:
                print(f"vm: host {path.name} {current} -> {value} for the run", file=sys.stderr)
                try:
                    path.write_text(f"{value}\n")
                except OSError as exc:
                    raise VMError(f"cannot raise {path} to {value}: {exc.strerror}") from exc
        yield
    finally:
        for note, path, original in reversed(notes):
            note.unlink(missing_ok=True)
            users = [n for n in CACHE.glob(f"sysctl-{path.name}.*") if _alive(int(n.suffix[1:]))]
            if not users:
                with contextlib.suppress(OSError):
                    path.write_text(f"{original}\n")


# -- one run -------------------------------------------------------------------------------


def _child_setup(console_fd: int) -> None:
    # The guest gets SIGKILL if this process dies, however it dies.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    # UML writes its console to fd 3.
    if console_fd != 3:
        os.dup2(console_fd, 3)


def _job_script(argv: list[str], cwd: str, env: dict[str, str], timeout: float) -> str:
    lines = ["# written by bench/vm/run.py: the command, run by init.sh in the guest"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    lines.append(f"cd {shlex.quote(cwd)} || exit 125")
    # `timeout` from the host's coreutils: it signals the command's whole process group.
    cmd = " ".join(shlex.quote(a) for a in argv)
    lines.append(f"exec timeout -k 10 {int(timeout)} {cmd} </dev/null")
    return "\n".join(lines) + "\n"


def _limits() -> str:
    """init.sh's limits (a shell fragment it sources from the control directory)."""
    sysctls = " ".join(f"{k}={v.replace(' ', ',')}" for k, v in SYSCTLS)
    return f"MSIZE={MSIZE}\nNOFILE={NOFILE}\nSYSCTLS={shlex.quote(sysctls)}\n"


@contextlib.contextmanager
def _terminating_raises() -> Iterator[None]:
    """SIGTERM (and SIGHUP) raise SystemExit while inside, so that finally blocks (the
    guest's stop) run; the previous handlers are put back after."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run(
    argv: list[str],
    *,
    backend: str,
    timeout: float,
    memory: str,
    cpus: int,
    rw: list[Path],
    cwd: str,
    env: dict[str, str],
    console_log: Path,
    info: Path | None = None,
    refresh: bool = False,
) -> int:
    """Boot a guest, run ``argv`` in it, return its exit status (124: out of time, 125:
    the guest could not run it). Blocks until the guest is off, at most ``timeout`` +
    BOOT_MARGIN seconds, then kills it. Writes what the guest was to ``info`` (JSON)
    if given. Raises VMError if no guest can be started; the guest is stopped whichever
    way this returns or raises."""
    chosen = choose_backend(backend)
    for path in rw:
        path.mkdir(parents=True, exist_ok=True)
    console_log.parent.mkdir(parents=True, exist_ok=True)
    CACHE.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="vm-ctl-", dir=CACHE) as ctl_dir:
        ctl = Path(ctl_dir)
        (ctl / "job.sh").write_text(_job_script(argv, cwd, env, timeout))
        (ctl / "limits").write_text(_limits())
        if chosen == "uml":
            guest = uml_guest(memory, ctl, rw, refresh)
        else:
            guest = qemu_guest(chosen, cpus, memory, ctl, rw, refresh)
        description: dict[str, Any] = {
            "backend": guest.backend,
            "kernel": guest.kernel,
            "package": guest.package,
            "cpus": guest.cpus,
            "memory": guest.memory,
            "why_not_kvm": kvm_problem(),
            "command": argv,
        }
        print(
            f"vm: {guest.backend} guest, Linux {guest.kernel} ({guest.package}), "
            f"{guest.cpus} vCPU(s), {memory} of memory; read-write: "
            f"{', '.join(map(str, rw)) or 'nothing'}; timeout {timeout:g} s",
            file=sys.stderr,
            flush=True,
        )
        host_log = console_log.with_name(console_log.stem + "-uml-host.log")
        started = time.monotonic()
        deadline = started + timeout + BOOT_MARGIN
        timed_out = False
        with (
            _terminating_raises(),
            host_sysctls(guest.host_sysctls),
            open(console_log, "wb") as log,
        ):
            console_r, console_w = os.pipe()
            try:
                # UML: its console on fd 3 (con0=fd:0,fd:3), its own stdio to a file: it
                # printf()s its start-up checks into a buffer that every host process it
                # forks would write out again.
                host_out = open(host_log, "wb") if guest.backend == "uml" else None  # noqa: SIM115
                process = subprocess.Popen(
                    guest.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=host_out or console_w,
                    stderr=subprocess.STDOUT,
                    pass_fds=(3,) if host_out else (),
                    env={**os.environ, **guest.env},
                    start_new_session=True,
                    preexec_fn=lambda: _child_setup(console_w),
                )
            finally:
                os.close(console_w)
                if host_out:
                    host_out.close()
            console = os.fdopen(console_r, "rb", buffering=0)
            try:
                timed_out = not _copy_console(console, log, deadline)
                if timed_out:
                    print(f"\nvm: no power-off after {timeout + BOOT_MARGIN:g} s: killing it")
            finally:
                # The guest's process group: UML's guest processes are host processes in it.
                stop_group(process, STOP_TIMEOUT)
                console.close()
        status = ctl / "rc"
        if status.exists():
            rc = int(status.read_text().strip() or 125)
        else:
            rc = 124 if timed_out else 125
            print(f"vm: the guest wrote no exit status (exit {process.returncode})")
            if guest.backend == "uml" and _UML_XSTATE in console_log.read_bytes():
                print(UML_XSTATE_WHY, file=sys.stderr)
                description["why_not"] = UML_XSTATE_WHY
        seconds = time.monotonic() - started
        print(
            f"vm: exit status {rc} after {seconds:.0f} s; console in {console_log}",
            file=sys.stderr,
            flush=True,
        )
        if info is not None:
            description.update(exit_status=rc, seconds=round(seconds))
            info.parent.mkdir(parents=True, exist_ok=True)
            info.write_text(json.dumps(description, indent=1) + "\n")
        return rc


def _copy_console(stream: IO[bytes], log: IO[bytes], deadline: float) -> bool:
    """Copy the guest's console to stdout and ``log`` until it closes it (True) or
    ``deadline`` (time.monotonic) passes (False). Blocks at most until the deadline."""
    os.set_blocking(stream.fileno(), False)
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if not selector.select(min(remaining, 1.0)):
                continue
            chunk = stream.read(65536)
            if chunk is None:
                continue
            if not chunk:
                return True
            chunk = chunk.replace(b"\r\n", b"\n")
            log.write(chunk)
            log.flush()
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        usage="%(prog)s [options] -- COMMAND [ARG...]",
    )
    parser.add_argument("--backend", choices=["auto", "kvm", "uml", "tcg"], default="auto")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds for the command")
    parser.add_argument("--memory", default="12G", help="guest RAM, default 12G")
    parser.add_argument("--cpus", type=int, default=min(2, os.cpu_count() or 1), help="qemu")
    parser.add_argument(
        "--rw",
        action="append",
        default=None,
        help="host directory shared read-write at the same path (repeatable; default bench/out)",
    )
    parser.add_argument("--cwd", default=str(REPO), help="the command's directory in the guest")
    parser.add_argument("--env", action="append", default=[], help="K=V for the command")
    parser.add_argument("--console-log", default=str(LOGS / "console.log"))
    parser.add_argument("--info", default=None, help="write what the guest was here (JSON)")
    parser.add_argument("--refresh", action="store_true", help="ask apt for newer kernels")
    parser.add_argument(
        "--check", action="store_true", help="only say which backend would run, or why none"
    )
    parser.add_argument("command", nargs="*")
    args = parser.parse_args()

    if args.check:
        try:
            print(choose_backend(args.backend))
        except VMError as exc:
            print(f"no guest here: {exc}")
            sys.exit(2)
        sys.exit(0)
    if not args.command:
        parser.error("no command (put it after --)")
    env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env["HOME"] = "/root"
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # the root is read-only (the overlay is RAM)
    env["MPLCONFIGDIR"] = "/tmp/matplotlib"
    env["DWEBSOCKET_BENCH_GUEST"] = "1"
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--env {item}: not K=V")
        env[key] = value
    rw = [Path(p).resolve() for p in (args.rw or [str(REPO / "bench" / "out")])]
    try:
        rc = run(
            args.command,
            backend=args.backend,
            timeout=args.timeout,
            memory=args.memory,
            cpus=args.cpus,
            rw=rw,
            cwd=args.cwd,
            env=env,
            console_log=Path(args.console_log),
            info=Path(args.info) if args.info else None,
            refresh=args.refresh,
        )
    except VMError as exc:
        print(f"vm: cannot start a guest: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(rc)


if __name__ == "__main__":
    main()
